// A program with its own allocation function and a USDT-style semaphore (a 2-byte counter
// in a `.probes` section, as systemtap's sdt.h lays it out). tests/tests/failures.rs holds a
// uprobe on pool_alloc with that semaphore as its reference counter, the way bcc's memleak
// probes libc, so that leaktrace's own probe on pool_alloc meets another tracer's.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((used, section(".probes"))) volatile unsigned short pool_semaphore = 0;

static void *kept[1 << 16];

__attribute__((noinline)) void *pool_alloc(size_t size) {
    void *block = malloc(size);
    if (block)
        memset(block, 0, size);
    return block;
}

int main(void) {
    for (unsigned i = 0;; i++) {
        void *block = pool_alloc(128);
        // One in four is kept: a slow leak from pool_alloc.
        if (i % 4 == 0)
            kept[(i / 4) % (1 << 16)] = block;
        else
            free(block);
        usleep(2000);
    }
}
