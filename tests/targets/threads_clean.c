// A threaded program that leaks nothing: what glibc keeps for itself must not read as the
// program's leak. Each worker's first allocator call is a free (of blocks main allocated):
// glibc sets up the thread's cache and may reserve an arena (an mmap of 64 MiB) inside
// that free. Workers are joined, so their stacks go to glibc's cache of thread stacks and
// stay mapped until the process ends; each thread's loader TLS block goes with them.
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 8
#define BLOCKS 64

struct work {
    void *blocks[BLOCKS];
};

static void *worker(void *arg) {
    struct work *work = arg;
    for (int i = 0; i < BLOCKS; i++) {
        free(work->blocks[i]);
    }
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(32 + i % 512);
        memset(p, i, 32);
        free(p);
    }
    return NULL;
}

int main(void) {
    static struct work works[THREADS];
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) {
        for (int i = 0; i < BLOCKS; i++) {
            works[t].blocks[i] = malloc(100 + i);
        }
    }
    // Two at a time: the later ones get stacks the earlier ones left in glibc's cache.
    for (int t = 0; t < THREADS; t += 2) {
        pthread_create(&threads[t], NULL, worker, &works[t]);
        pthread_create(&threads[t + 1], NULL, worker, &works[t + 1]);
        pthread_join(threads[t], NULL);
        pthread_join(threads[t + 1], NULL);
    }
    return 0;
}
