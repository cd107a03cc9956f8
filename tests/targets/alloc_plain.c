// Run-mode target built several ways (static glibc, static musl, …): leaks through malloc,
// calloc and realloc from named functions; balanced churn frees everything else.
#include <stdlib.h>

#define N 20
static void *volatile kept[3 * N];

__attribute__((noinline)) void leak_plain_malloc(int i) { kept[i] = malloc(1000); }
__attribute__((noinline)) void leak_plain_calloc(int i) { kept[N + i] = calloc(4, 500); }
__attribute__((noinline)) void leak_plain_realloc(int i) {
    void *p = malloc(100);
    kept[2 * N + i] = realloc(p, 3000);
}
__attribute__((noinline)) void balanced_plain(void) {
    for (int i = 0; i < 200; i++) {
        void *volatile p = malloc(64);
        free(p);
    }
}
int main(void) {
    for (int i = 0; i < N; i++) {
        leak_plain_malloc(i);
        leak_plain_calloc(i);
        leak_plain_realloc(i);
    }
    balanced_plain();
    return 0;
}
