// Run-mode target linked with mimalloc (-lmimalloc): leaks through mi_malloc, mi_calloc and
// mi_heap_malloc (heap first, size second); balanced calls mi_free and mi_free_size.
#include <mimalloc.h>
#include <stdlib.h>

#define N 20
static void *volatile kept[3 * N];

__attribute__((noinline)) void leak_mi_malloc(int i) { kept[i] = mi_malloc(1000); }
__attribute__((noinline)) void leak_mi_calloc(int i) { kept[N + i] = mi_calloc(4, 500); }
__attribute__((noinline)) void leak_mi_heap(mi_heap_t *heap, int i) {
    kept[2 * N + i] = mi_heap_malloc(heap, 3000);
}
__attribute__((noinline)) void balanced_mi(void) {
    for (int i = 0; i < 200; i++) {
        void *volatile p = mi_malloc(64);
        mi_free(p);
        void *volatile q = mi_malloc(80);
        mi_free_size(q, 80);
    }
}
int main(void) {
    mi_heap_t *heap = mi_heap_new();
    for (int i = 0; i < N; i++) {
        leak_mi_malloc(i);
        leak_mi_calloc(i);
        leak_mi_heap(heap, i);
    }
    balanced_mi();
    return 0;
}
