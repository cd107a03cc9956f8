// A plugin with its own allocator: linked with mimalloc, it allocates with mi_malloc while
// its host keeps glibc's malloc. plugin_mi_leak keeps one 2000-byte block per call.
#include <mimalloc.h>

static void *volatile kept[64];
static int next;

__attribute__((noinline)) void plugin_mi_leak(void) {
    if (next < 64) kept[next++] = mi_malloc(2000);
}
