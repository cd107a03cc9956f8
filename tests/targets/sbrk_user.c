// Grows its heap with sbrk directly (as a hand-written arena would): 10 × 64 KiB, never
// given back. leaktrace reports them as one [brk] stack through grow_arena.
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) static void grow_arena(void) {
    char *p = sbrk(64 << 10);
    memset(p, 1, 64 << 10);
}

int main(void) {
    for (int i = 0; i < 10; i++) {
        grow_arena();
        usleep(50 * 1000);
    }
    return 0;
}
