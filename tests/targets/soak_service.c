// A long-running service for the soak tests: two worker threads allocate and free at full
// speed (balanced: everything they allocate is freed within 64 allocations), while the main
// thread leaks one 64-byte block every 10 ms from leak_slowly. It starts once the file GO
// exists (so a tracer attached first sees every leaked block); SECONDS later it stops and
// prints how many blocks it leaked, then exits 0.
//
//   soak_service SECONDS GO
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static atomic_int stop;
static void *volatile leaked_last;

static void *work(void *arg) {
    unsigned state = (unsigned)(long)arg;
    void *ring[64] = {0};
    unsigned long n = 0;
    while (!atomic_load(&stop)) {
        state = state * 1103515245u + 12345u;
        size_t size = 16 + (state >> 16) % 4096;
        int slot = n++ % 64;
        free(ring[slot]);
        ring[slot] = malloc(size);
        memset(ring[slot], 1, 16);
    }
    for (int slot = 0; slot < 64; slot++) free(ring[slot]);
    return NULL;
}

NOINLINE static void leak_slowly(void) {
    void *block = malloc(64);
    memset(block, 2, 64);
    leaked_last = block;
}

int main(int argc, char **argv) {
    int seconds = argc > 1 ? atoi(argv[1]) : 60;
    while (argc > 2 && access(argv[2], F_OK) != 0) usleep(10000);
    pthread_t workers[2];
    for (long t = 0; t < 2; t++) pthread_create(&workers[t], NULL, work, (void *)(t + 1));
    struct timespec start, now, tick = {0, 10 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    long leaked = 0;
    do {
        leak_slowly();
        leaked++;
        nanosleep(&tick, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < seconds);
    atomic_store(&stop, 1);
    for (int t = 0; t < 2; t++) pthread_join(workers[t], NULL);
    printf("leaked=%ld\n", leaked);
    return 0;
}
