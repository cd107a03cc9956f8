// A program that allocates at full speed and prints what it computed, for the fault tests:
// leaktrace is killed while tracing it, and its output and exit status must be what an
// untraced run gives. It also prints where malloc and free hold a breakpoint (0xcc) in their
// first 16 bytes, as a bitmask: a probe left behind would show there. leaktrace's probes go
// out a moment after it ends (a child of it closes their links once leaktrace is gone, which
// waits for the kernel), so breakpoints still there at the end are given 10 s to go.
//
//   steady_worker ROUNDS    ROUNDS × 10000 malloc/free of varying sizes; exits 7
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned breakpoints(const char *name) {
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    const unsigned char *code = libc ? dlsym(libc, name) : NULL;
    unsigned mask = 0;
    for (int i = 0; code && i < 16; i++)
        if (code[i] == 0xcc) mask |= 1u << i;
    return mask;
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 100;
    uint64_t sum = 0;
    void *kept[64] = {0};
    unsigned state = 1;
    for (long round = 0; round < rounds; round++) {
        for (int i = 0; i < 10000; i++) {
            state = state * 1103515245u + 12345u;
            size_t size = 16 + (state >> 16) % 2000;
            unsigned char *block = malloc(size);
            memset(block, (int)(state & 0xff), size);
            sum += block[size / 2] + size;
            int slot = (state >> 8) % 64;
            free(kept[slot]);
            kept[slot] = block;
        }
    }
    for (int slot = 0; slot < 64; slot++) free(kept[slot]);
    for (int tries = 0; tries < 200 && (breakpoints("malloc") || breakpoints("free")); tries++)
        usleep(50000);
    printf("sum=%llu malloc_breakpoints=%x free_breakpoints=%x\n", (unsigned long long)sum,
           breakpoints("malloc"), breakpoints("free"));
    return 7;
}
