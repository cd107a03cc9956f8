// Run-mode target: allocates 100 calls below main (a stack deeper than 64 frames), with
// recursion the compiler cannot turn into a loop.
#include <stdlib.h>

static void *volatile kept;

__attribute__((noinline)) void descend(int depth) {
    if (depth == 0) {
        kept = malloc(10);
    } else {
        descend(depth - 1);
    }
    __asm__ volatile("");
}

int main(void) {
    descend(100);
    return 0;
}
