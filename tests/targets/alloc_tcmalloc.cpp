// Run-mode target linked with tcmalloc (-ltcmalloc): leaks through malloc (tcmalloc's),
// tc_malloc and tcmalloc's own operator new; balanced calls free and delete.
#include <gperftools/tcmalloc.h>
#include <cstdlib>

#define N 20
static void *volatile kept[3 * N];

__attribute__((noinline)) void leak_tc_plain(int i) { kept[i] = malloc(1000); }
__attribute__((noinline)) void leak_tc_direct(int i) { kept[N + i] = tc_malloc(2000); }
__attribute__((noinline)) void leak_tc_new(int i) { kept[2 * N + i] = new char[3000]; }
__attribute__((noinline)) void balanced_tc(void) {
    for (int i = 0; i < 200; i++) {
        char *volatile p = new char[64];
        delete[] p;
        void *volatile q = tc_malloc(80);
        tc_free(q);
        void *volatile r = malloc(96);
        free(r);
    }
}
int main() {
    for (int i = 0; i < N; i++) {
        leak_tc_plain(i);
        leak_tc_direct(i);
        leak_tc_new(i);
    }
    balanced_tc();
    return 0;
}
