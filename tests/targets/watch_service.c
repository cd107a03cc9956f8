// A service for `leaktrace watch` tests, in one of two modes:
// - leak (default): remember_session keeps 2 KiB every 20 ms (100 KiB/s) that nobody frees,
//   among balanced per-request work.
// - healthy: a sawtooth: fill_batch takes 256 KiB blocks (mmap'd by malloc) for 3 s, then all
//   are freed at once; plus 8 MiB kept from start-up (load_tables). Its memory never rises
//   for long, so it must never escalate.
// It runs until killed and prints nothing.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct session { struct session *next; char data[2048 - sizeof(void *)]; };
static struct session *sessions;
static char *tables;

__attribute__((noinline)) static void remember_session(int key) {
    struct session *s = malloc(sizeof *s);
    memset(s->data, key, sizeof s->data);
    s->next = sessions;
    sessions = s;
}

__attribute__((noinline)) static int handle_request(int key) {
    char *volatile scratch = malloc(700);
    memset(scratch, key, 700);
    int sum = scratch[key % 700];
    free(scratch);
    return sum;
}

__attribute__((noinline)) static void load_tables(void) {
    tables = malloc(8 << 20);
    memset(tables, 1, 8 << 20);
}

#define BATCH 32
static char *batch[BATCH];

__attribute__((noinline)) static void fill_batch(int slot) {
    batch[slot] = malloc(256 << 10);
    memset(batch[slot], slot, 256 << 10);
}

__attribute__((noinline)) static void drop_batch(void) {
    for (int i = 0; i < BATCH; i++) {
        free(batch[i]);
        batch[i] = NULL;
    }
}

int main(int argc, char **argv) {
    int healthy = argc > 1 && strcmp(argv[1], "healthy") == 0;
    volatile int sink = 0;
    if (healthy) {
        load_tables();
        for (int tick = 0;; tick++) {
            // 10 blocks a second for 3 s, then free: a 4-second sawtooth of 7.5 MiB.
            int phase = tick % 40;
            if (phase < 30 && phase % 1 == 0 && phase < BATCH) fill_batch(phase);
            if (phase == 39) drop_batch();
            sink += handle_request(tick);
            usleep(100 * 1000);
        }
    }
    for (int tick = 0;; tick++) {
        remember_session(tick);
        sink += handle_request(tick);
        usleep(20 * 1000);
    }
    return sink;
}
