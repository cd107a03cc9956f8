// Run-mode target linked with jemalloc (-ljemalloc): leaks through malloc (jemalloc's),
// mallocx and rallocx; frees through free, sdallocx and dallocx balance the rest.
#include <jemalloc/jemalloc.h>
#include <stdlib.h>

#define N 20
static void *volatile kept[3 * N];

__attribute__((noinline)) void leak_je_malloc(int i) { kept[i] = malloc(1000); }
__attribute__((noinline)) void leak_mallocx(int i) { kept[N + i] = mallocx(2000, 0); }
__attribute__((noinline)) void leak_rallocx(int i) {
    void *p = mallocx(100, 0);
    kept[2 * N + i] = rallocx(p, 3000, 0);
}
__attribute__((noinline)) void balanced_sized(void) {
    for (int i = 0; i < 200; i++) {
        void *volatile p = mallocx(64, 0);
        sdallocx(p, 64, 0);
        void *volatile q = malloc(80);
        dallocx(q, 0);
        void *volatile r = malloc(96);
        free(r);
    }
}
int main(void) {
    for (int i = 0; i < N; i++) {
        leak_je_malloc(i);
        leak_mallocx(i);
        leak_rallocx(i);
    }
    balanced_sized();
    return 0;
}
