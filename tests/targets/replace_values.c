// A key-value store whose values are rewritten after leaktrace attaches, beside a real leak.
// Before the file named by argv[1] exists it stores KEYS values of VALUE_BYTES (store_value)
// and waits. Then:
// - one thread rewrites the value of a random key (the old value freed, a new one stored by
//   store_value) every REWRITE_US: the values from before the attach are replaced by traced
//   ones, so store_value's traced memory rises as a leak's does, exactly as fast as untraced
//   blocks are freed, and levels off at KEYS values once all are replaced (within a few
//   seconds): not a leak;
// - another leaks LEAK_BYTES every 20 ms from leak_record: a leak.
// Runs until killed.
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KEYS 2048
#define VALUE_BYTES 200
#define REWRITE_US 500
#define LEAK_BYTES 96

static void *values[KEYS];
static void *volatile sink;

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    nanosleep(&ts, NULL);
}

__attribute__((noinline)) static void *store_value(uint32_t seed) {
    char *value = malloc(VALUE_BYTES);
    memset(value, (int)(seed & 0xff), VALUE_BYTES);
    return value;
}

__attribute__((noinline)) static void leak_record(void) {
    char *record = malloc(LEAK_BYTES);
    memset(record, 7, LEAK_BYTES);
    sink = record;
}

static void *rewriter(void *arg) {
    (void)arg;
    uint64_t state = 88172645463325252ull;
    for (;;) {
        // xorshift64: a random key each time.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        uint32_t key = (uint32_t)(state % KEYS);
        void *old = values[key];
        values[key] = store_value((uint32_t)state);
        free(old);
        sleep_us(REWRITE_US);
    }
    return NULL;
}

static void *leaker(void *arg) {
    (void)arg;
    for (;;) {
        leak_record();
        sleep_us(20000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        return 2;
    }
    for (uint32_t key = 0; key < KEYS; key++) {
        values[key] = store_value(key);
    }
    struct stat st;
    while (stat(argv[1], &st) != 0) {
        sleep_us(10000);
    }
    pthread_t threads[2];
    pthread_create(&threads[0], NULL, rewriter, NULL);
    pthread_create(&threads[1], NULL, leaker, NULL);
    pthread_join(threads[0], NULL);
    return 0;
}
