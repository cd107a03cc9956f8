// Times N malloc(64)+free pairs; prints "ns_per_pair=X". Used by `cargo xtask bench`.
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 5000000;
    void *volatile sink;
    double start = now_ns();
    for (long i = 0; i < pairs; i++) {
        sink = malloc(64);
        free(sink);
    }
    double elapsed = now_ns() - start;
    printf("ns_per_pair=%.1f\n", elapsed / pairs);
    return 0;
}
