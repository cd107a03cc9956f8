// Six memory patterns at once, one thread each, each in its own function so each has its own
// stacks. It waits until the file named by argv[1] exists (the test creates it once leaktrace
// is attached, so the start-up allocation is seen), then runs until killed.
//
// - leak_steadily:    256 B every 50 ms, never freed                  -> leaking, ~5 KiB/s
// - queue_push:       a FIFO that gets 5 items per tick, loses 4       -> growing (old items freed)
// - load_tables:      8 MiB in 32 blocks at start-up, held forever     -> stable
// - batch_item:       50 items piled up over a second, then freed      -> transient
// - ring_store:       a 64-slot ring whose slots are replaced          -> stable
// - serve_request:    heavy balanced traffic; 1 in 500 requests leaks
//                     its 48-byte buffer (~5000 requests/s: ~480 B/s)  -> leaking, slow
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void *volatile sink;

__attribute__((noinline)) static void leak_steadily(void) {
    char *block = malloc(256);
    memset(block, 1, 256);
    sink = block;
}

static void *leaker(void *arg) {
    (void)arg;
    for (;;) {
        leak_steadily();
        sleep_ms(50);
    }
    return NULL;
}

// A FIFO queue whose consumer is slower than its producer.
#define QUEUE_CAP (1 << 16)
static void *queue[QUEUE_CAP];
static unsigned head, tail;

__attribute__((noinline)) static void queue_push(void) {
    char *item = malloc(200);
    memset(item, 2, 200);
    queue[tail++ % QUEUE_CAP] = item;
}

static void *producer_consumer(void *arg) {
    (void)arg;
    for (;;) {
        for (int i = 0; i < 5; i++) queue_push();
        for (int i = 0; i < 4 && head != tail; i++) free(queue[head++ % QUEUE_CAP]);
        sleep_ms(50);
    }
    return NULL;
}

static void *tables[32];

__attribute__((noinline)) static void load_tables(void) {
    for (int i = 0; i < 32; i++) {
        tables[i] = malloc(256 * 1024);
        memset(tables[i], 3, 256 * 1024);
    }
}

__attribute__((noinline)) static void *batch_item(void) {
    char *item = malloc(4096);
    memset(item, 4, 4096);
    return item;
}

static void *batcher(void *arg) {
    (void)arg;
    void *batch[50];
    for (;;) {
        for (int i = 0; i < 50; i++) {
            batch[i] = batch_item();
            sleep_ms(20);
        }
        for (int i = 0; i < 50; i++) free(batch[i]);
    }
    return NULL;
}

static void *ring[64];

__attribute__((noinline)) static void ring_store(unsigned slot) {
    free(ring[slot]);
    ring[slot] = malloc(1024);
    memset(ring[slot], 5, 1024);
}

static void *ringer(void *arg) {
    (void)arg;
    for (unsigned i = 0;; i++) {
        ring_store(i % 64);
        sleep_ms(20);
    }
    return NULL;
}

__attribute__((noinline)) static uint64_t serve_request(unsigned n) {
    char *volatile buffer = malloc(48);
    memset(buffer, (int)n, 48);
    uint64_t sum = (uint8_t)buffer[n % 48];
    if (n % 500 != 0) free(buffer);  // the forgotten free on a rare path
    return sum;
}

static void *server(void *arg) {
    (void)arg;
    uint64_t total = 0;
    for (unsigned n = 1;; n++) {
        total += serve_request(n);
        if (n % 50 == 0) sleep_ms(10);
    }
    sink = (void *)(uintptr_t)total;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    struct stat st;
    while (stat(argv[1], &st) != 0) sleep_ms(10);
    load_tables();
    void *(*workers[])(void *) = {leaker, producer_consumer, batcher, ringer, server};
    pthread_t threads[5];
    for (int i = 0; i < 5; i++) pthread_create(&threads[i], NULL, workers[i], NULL);
    for (int i = 0; i < 5; i++) pthread_join(threads[i], NULL);
    return 0;
}
