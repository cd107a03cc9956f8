// Grows the heap with malloc and gives it back with free, over and over: malloc moves the
// program break up (brk inside malloc) and free trims it down again (brk inside free, once
// the free top of the heap passes M_TRIM_THRESHOLD, 128 KiB). Neither move is memory of the
// program's own: its blocks are. remember() keeps 1000 bytes every 50 ms: the one leak.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BURST 40
#define KEPT (1 << 16)

// Not static: the compiler would drop the stores to a table nothing reads, and the mallocs.
void *kept[KEPT];
static unsigned long remembered;

__attribute__((noinline)) static void remember(void) {
    char *p = malloc(1000);
    memset(p, 'k', 1000);
    kept[remembered++ % KEPT] = p;
}

// 40 × 32 KiB (below the mmap threshold: from the heap's top), freed newest first.
__attribute__((noinline)) static void burst(void) {
    void *blocks[BURST];
    for (int i = 0; i < BURST; i++) {
        blocks[i] = malloc(32 << 10);
        memset(blocks[i], i, 32 << 10);
    }
    for (int i = BURST - 1; i >= 0; i--)
        free(blocks[i]);
}

int main(void) {
    for (;;) {
        burst();
        remember();
        usleep(50 * 1000);
    }
}
