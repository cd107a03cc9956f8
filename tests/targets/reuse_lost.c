// Blocks lost after the allocator reused freed memory for them: 64 blocks of 48 bytes are
// allocated and freed (the allocator's caches and free lists now hold their addresses),
// then 20 of the same size are allocated and dropped one after another (lose_reused:
// 960 bytes definitely lost), and the program returns from main. The allocator's own
// bookkeeping, and the stale slots of the exit path's frames, must not keep them.
// Built against glibc, jemalloc, tcmalloc or mimalloc; exits with status 0.
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

NOINLINE static void *lose_reused(void) { return malloc(48); }

NOINLINE static void churn(void) {
    void *blocks[64];
    for (int i = 0; i < 64; i++) blocks[i] = malloc(48);
    for (int i = 0; i < 64; i++) free(blocks[i]);
}

NOINLINE static void lose(void) {
    for (int i = 0; i < 20; i++) {
        void *volatile block = lose_reused();
        memset(block, 1, 48);
    }
}

int main(void) {
    churn();
    lose();
    return 0;
}
