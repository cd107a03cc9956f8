// A library exit_cases.c loads with dlopen: its thread-local variable lives in dynamic TLS,
// which the loader allocates at the first use (exit_cases.c's case keep_in_dynamic_tls).
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

__thread void *volatile dynamic_tls_slot;

NOINLINE static void *keep_in_dynamic_tls(void) { return malloc(344); }

void fill_dynamic_tls(void) {
    dynamic_tls_slot = keep_in_dynamic_tls();
    memset(dynamic_tls_slot, 16, 344);
}
