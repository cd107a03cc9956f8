// Run-mode target: 4 threads each leak 25 blocks of 333 bytes in thread_leak and churn
// balanced allocations.
#include <pthread.h>
#include <stdlib.h>

#define THREADS 4
#define PER_THREAD 25
static void *volatile kept[THREADS * PER_THREAD];

__attribute__((noinline)) void thread_leak(int t) {
    for (int i = 0; i < PER_THREAD; i++) kept[t * PER_THREAD + i] = malloc(333);
}
__attribute__((noinline)) void thread_churn(void) {
    for (int i = 0; i < 500; i++) { char *volatile p = malloc(40); free(p); }
}
static void *worker(void *arg) {
    thread_leak((int)(long)arg);
    thread_churn();
    return NULL;
}
int main(void) {
    pthread_t threads[THREADS];
    for (long t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, worker, (void *)t);
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    return 0;
}
