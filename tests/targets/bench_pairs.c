// Allocation workloads for `cargo xtask bench`. Prints "ns_per_pair=X": nanoseconds of wall
// time per malloc+free pair (per sequence for realloc), from CLOCK_MONOTONIC.
//
//   bench_pairs [pairs] N         malloc(64)+free, one thread (the default mode)
//   bench_pairs threads N         the same on two threads, N pairs in all
//   bench_pairs mixed N           sizes from 16 B to 64 KiB, one thread
//   bench_pairs realloc N         malloc(16), realloc to 64, to 256, free
//   bench_pairs deep N            malloc(64)+free 32 calls below main (a deep stack to walk)
//   bench_pairs handled N         malloc(64)+free inside handle_one(route, i), a function to
//                                 put a --scope on (a request handler doing one pair)
//   bench_pairs hold N SECONDS [DELAY]
//                                 waits DELAY seconds (for a tracer to attach), keeps N
//                                 malloc(32) blocks live for SECONDS, then exits
//
// With BENCH_WAIT_FOR_PROBES=S set, the workload starts only once the malloc and free it calls
// (libc's, or a preloaded allocator's) begin with a breakpoint (a tracer attached with -p has
// placed its uprobes), S seconds later.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void *volatile sink;

static void *pairs(void *arg) {
    long n = *(long *)arg;
    void *volatile block;  // per thread: a shared one would be freed twice
    for (long i = 0; i < n; i++) {
        block = malloc(64);
        free(block);
    }
    return NULL;
}

__attribute__((noinline)) static void descend(int depth, long n) {
    if (depth == 0) {
        pairs(&n);
    } else {
        descend(depth - 1, n);
    }
    __asm__ volatile("");
}

static void mixed(long n) {
    unsigned state = 12345;
    for (long i = 0; i < n; i++) {
        state = state * 1103515245u + 12345u;
        size_t size = 16u << ((state >> 16) % 13);  // 16 B .. 64 KiB
        void *volatile block = malloc(size);
        free(block);
    }
}

static void reallocs(long n) {
    for (long i = 0; i < n; i++) {
        void *p = malloc(16);
        p = realloc(p, 64);
        p = realloc(p, 256);
        sink = p;
        free(p);
    }
}

// Not static: --scope finds it in the symbol table either way, but an exported name is what
// a real handler usually has.
__attribute__((noinline)) void handle_one(const char *route, long i) {
    void *volatile block = malloc(64);
    __asm__ volatile("" : : "r"(route), "r"(i) : "memory");
    free(block);
}

static void handled(long n) {
    static const char *routes[] = {"/users", "/orders", "/cart", "/search"};
    for (long i = 0; i < n; i++) handle_one(routes[i % 4], i);
}

static void wait_for_probes(void) {
    const char *settle = getenv("BENCH_WAIT_FOR_PROBES");
    if (!settle) return;
    volatile unsigned char *m = dlsym(RTLD_DEFAULT, "malloc");
    volatile unsigned char *f = dlsym(RTLD_DEFAULT, "free");
    if (!m || !f) {
        fprintf(stderr, "cannot find malloc and free\n");
        exit(2);
    }
    for (int i = 0; i < 1800 && (m[0] != 0xcc || f[0] != 0xcc); i++) usleep(100000);
    if (m[0] != 0xcc || f[0] != 0xcc) {
        fprintf(stderr, "no breakpoint on malloc and free after 180 s\n");
        exit(2);
    }
    sleep(atoi(settle));
}

int main(int argc, char **argv) {
    const char *mode = "pairs";
    int first = 1;
    if (argc > 1 && (argv[1][0] < '0' || argv[1][0] > '9')) {
        mode = argv[1];
        first = 2;
    }
    long n = argc > first ? atol(argv[first]) : 5000000;
    if (strcmp(mode, "hold") == 0) {
        int seconds = argc > first + 1 ? atoi(argv[first + 1]) : 10;
        int delay = argc > first + 2 ? atoi(argv[first + 2]) : 0;
        sleep(delay);
        void **blocks = malloc(n * sizeof *blocks);
        for (long i = 0; i < n; i++) blocks[i] = malloc(32);
        printf("holding=%ld\n", n);
        fflush(stdout);
        sleep(seconds);
        for (long i = 0; i < n; i++) free(blocks[i]);
        free(blocks);
        return 0;
    }
    wait_for_probes();
    double start = now_ns();
    if (strcmp(mode, "pairs") == 0) {
        pairs(&n);
    } else if (strcmp(mode, "threads") == 0) {
        long half = n / 2;
        pthread_t threads[2];
        for (int t = 0; t < 2; t++) pthread_create(&threads[t], NULL, pairs, &half);
        for (int t = 0; t < 2; t++) pthread_join(threads[t], NULL);
    } else if (strcmp(mode, "deep") == 0) {
        descend(32, n);
    } else if (strcmp(mode, "mixed") == 0) {
        mixed(n);
    } else if (strcmp(mode, "realloc") == 0) {
        reallocs(n);
    } else if (strcmp(mode, "handled") == 0) {
        handled(n);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    double elapsed = now_ns() - start;
    printf("ns_per_pair=%.1f\n", elapsed / n);
    return 0;
}
