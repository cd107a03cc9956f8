// Run-mode target with its own pool allocator (no malloc): pool_alloc(pool, size) and
// pool_free(pool, block), seen only when named with --alloc-fn. leak_from_pool keeps 20
// blocks of 128 bytes; churn_pool frees what it takes.
#include <stddef.h>

struct pool {
    char *next;
    char *end;
    void *free_list;
};
static char arena[1 << 20];
static struct pool main_pool = {arena, arena + sizeof arena, NULL};
static void *volatile kept[20];

__attribute__((noinline)) void *pool_alloc(struct pool *pool, size_t size) {
    if (size <= 128 && pool->free_list) {
        void *block = pool->free_list;
        pool->free_list = *(void **)block;
        return block;
    }
    size = (size + 127) & ~(size_t)127;
    if (pool->next + size > pool->end) return NULL;
    void *block = pool->next;
    pool->next += size;
    return block;
}
__attribute__((noinline)) void pool_free(struct pool *pool, void *block) {
    if (!block) return;
    *(void **)block = pool->free_list;
    pool->free_list = block;
}
__attribute__((noinline)) void leak_from_pool(int i) { kept[i] = pool_alloc(&main_pool, 128); }
__attribute__((noinline)) void churn_pool(void) {
    for (int i = 0; i < 200; i++) {
        void *volatile block = pool_alloc(&main_pool, 100);
        pool_free(&main_pool, block);
    }
}
int main(void) {
    for (int i = 0; i < 20; i++) leak_from_pool(i);
    churn_pool();
    return 0;
}
