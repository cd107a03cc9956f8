// Run-mode target: leaks a known number of known-size blocks through every member of the
// allocator family and through mmap, plus balanced code that must not be called leaking.
// Exits with status 3 so the test can check leaktrace passes the status on.
#define _GNU_SOURCE
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define N 3
static void *volatile kept[64];
static int nkept;
static void keep(void *p) { kept[nkept++ % 64] = p; }

__attribute__((noinline)) void leak_malloc(void) { for (int i = 0; i < N; i++) keep(malloc(1001)); }
__attribute__((noinline)) void leak_calloc(void) { for (int i = 0; i < N; i++) keep(calloc(10, 202)); }
__attribute__((noinline)) void *start_block(void) { return malloc(16); }
__attribute__((noinline)) void leak_realloc_grow(void) {
    for (int i = 0; i < N; i++) keep(realloc(start_block(), 3003));
}
__attribute__((noinline)) void leak_realloc_null(void) { for (int i = 0; i < N; i++) keep(realloc(NULL, 4004)); }
__attribute__((noinline)) void leak_reallocarray(void) { for (int i = 0; i < N; i++) keep(reallocarray(NULL, 50, 101)); }
__attribute__((noinline)) void leak_posix_memalign(void) {
    for (int i = 0; i < N; i++) { void *p = NULL; if (posix_memalign(&p, 64, 6006) == 0) keep(p); }
}
__attribute__((noinline)) void leak_aligned_alloc(void) { for (int i = 0; i < N; i++) keep(aligned_alloc(64, 7040)); }
__attribute__((noinline)) void leak_memalign(void) { for (int i = 0; i < N; i++) keep(memalign(128, 8008)); }
__attribute__((noinline)) void leak_valloc(void) { for (int i = 0; i < N; i++) keep(valloc(9009)); }
__attribute__((noinline)) void leak_pvalloc(void) { for (int i = 0; i < N; i++) keep(pvalloc(8192)); }
__attribute__((noinline)) void leak_mmap(void) {
    for (int i = 0; i < N; i++)
        keep(mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
}
// 8 pages mapped, the middle 2 unmapped: 6 pages in 2 pieces stay.
__attribute__((noinline)) void partial_munmap(void) {
    long page = 4096;
    char *p = mmap(NULL, 8 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(p + 3 * page, 2 * page);
    keep(p);
}
__attribute__((noinline)) void mmap_balanced(void) {
    for (int i = 0; i < 10; i++) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        munmap(p, 4096);
    }
}
__attribute__((noinline)) void balanced_churn(void) {
    for (int i = 0; i < 1000; i++) {
        char *volatile p = malloc(77);
        p[0] = 1;
        free(p);
    }
    char *volatile q = malloc(55);
    q = realloc(q, 0); // frees
}
// Big enough for glibc to serve it with its own mmap: must be counted once, as malloc.
__attribute__((noinline)) void leak_large(void) { keep(malloc(1 << 20)); }

int main(void) {
    leak_malloc();
    leak_calloc();
    leak_realloc_grow();
    leak_realloc_null();
    leak_reallocarray();
    leak_posix_memalign();
    leak_aligned_alloc();
    leak_memalign();
    leak_valloc();
    leak_pvalloc();
    leak_mmap();
    partial_munmap();
    mmap_balanced();
    balanced_churn();
    leak_large();
    return 3;
}
