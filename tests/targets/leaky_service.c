// The demo service for `cargo xtask demo`: a loop that serves "requests" forever.
// - cache_insert leaks 4096 bytes every 100 ms (40 KiB/s): nobody ever evicts.
// - handle_request allocates a scratch buffer per request and frees it (transient).
// - enqueue_job adds 5 jobs every 100 ms and the worker finishes 4 (the oldest): the queue
//   grows by 7.5 KiB/s, but its old jobs are freed (growing, not leaking).
// With --healthy it neither leaks nor lets its queue grow (4 jobs in, 4 out): the control
// for tests of what is exported.
// - load_config allocates 64 KiB once at start-up and keeps it (before leaktrace attaches,
//   so it is not seen: only allocations made while traced are reported).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct entry { struct entry *next; char payload[4096 - sizeof(void *)]; };
static struct entry *cache;
static char *config;

__attribute__((noinline)) static void load_config(void) {
    config = malloc(64 * 1024);
    memset(config, 'c', 64 * 1024);
}

__attribute__((noinline)) static void cache_insert(int key) {
    struct entry *e = malloc(sizeof *e);
    memset(e->payload, key, sizeof e->payload);
    e->next = cache;
    cache = e;
}

__attribute__((noinline)) static uint64_t handle_request(int key) {
    char *volatile scratch = malloc(512);
    memset(scratch, key, 512);
    uint64_t sum = scratch[key % 512];
    free(scratch);
    return sum;
}

struct job { struct job *next; char data[768 - sizeof(void *)]; };
static struct job *queue_head, *queue_tail;

__attribute__((noinline)) static void enqueue_job(int key) {
    struct job *job = malloc(sizeof *job);
    memset(job->data, key, sizeof job->data);
    job->next = NULL;
    if (queue_tail) queue_tail->next = job; else queue_head = job;
    queue_tail = job;
}

static void finish_job(void) {
    struct job *job = queue_head;
    if (!job) return;
    queue_head = job->next;
    if (!queue_head) queue_tail = NULL;
    free(job);
}

int main(int argc, char **argv) {
    int healthy = argc > 1 && strcmp(argv[1], "--healthy") == 0;
    load_config();
    uint64_t total = 0;
    for (int i = 0;; i++) {
        for (int r = 0; r < 20; r++) total += handle_request(i + r);
        if (!healthy) cache_insert(i);
        for (int j = 0; j < (healthy ? 4 : 5); j++) enqueue_job(i + j);
        for (int j = 0; j < 4; j++) finish_job();
        usleep(100 * 1000);
    }
    return (int)total;
}
