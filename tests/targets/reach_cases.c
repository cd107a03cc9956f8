// Every case of issue 8's reachability classification, each allocated from a function of its
// own (so each is a stack of its own), for comparison with valgrind's memcheck:
//   keep_in_global      still reachable   (a global points to it)
//   keep_in_tls         still reachable   (a thread-local points to it)
//   keep_on_stack       still reachable   (only a blocked thread's stack points to it)
//   keep_in_register    still reachable   (only a spinning thread's register points to it)
//   lose_plainly        definitely lost   (nothing points to it)
//   lose_cycle          1 definitely + 1 indirectly lost (two blocks pointing at each other)
//   lose_parent         definitely lost,  lose_child: indirectly lost (only the parent points to it)
//   keep_interior       possibly lost     (only a pointer 16 bytes into it)
//   grow_cache          still reachable, and growing (a global array keeps every entry)
// With "wait" it allocates once it sees the file named by its second argument (so an
// attached leaktrace sees every allocation), then sleeps; otherwise it exits at once (for
// valgrind, whose leak check runs at exit).
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

// Globals the program never reads back: volatile and visible, so the compiler keeps every
// store (and every allocation).
void *volatile global_keep;
__thread void *volatile tls_keep;
char *volatile global_interior;
void *volatile cache[1024];
static volatile int ready;

// Makes the compiler believe `p` escapes, so the allocation and the stores into it stay.
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

struct node {
    struct node *next;
    char pad[56];
};

NOINLINE static void keep_in_global(void) { global_keep = malloc(100); }
NOINLINE static void keep_in_tls(void) { tls_keep = malloc(500); }

NOINLINE static void lose_plainly(void) {
    char *volatile p = malloc(200);
    memset(p, 0, 200);
    p = NULL;
}

NOINLINE static struct node *cycle_node(void) { return calloc(1, sizeof(struct node)); }

NOINLINE static void lose_cycle(void) {
    struct node *a = cycle_node();
    struct node *b = cycle_node();
    a->next = b;
    b->next = a;
    ESCAPE(a);
    ESCAPE(b);
}

NOINLINE static void *lose_child(void) { return calloc(1, 300); }

NOINLINE static void lose_parent(void) {
    struct node *parent = calloc(1, sizeof(struct node));
    parent->next = lose_child();
    ESCAPE(parent);
}

NOINLINE static void keep_interior(void) { global_interior = (char *)malloc(400) + 16; }

NOINLINE static void grow_cache(int i) { cache[i] = malloc(64); }

NOINLINE static void *keep_on_stack(void *unused) {
    (void)unused;
    void *volatile kept = malloc(600);
    ready++;
    for (;;) pause();
    return kept;
}

NOINLINE static void *keep_in_register(void *unused) {
    (void)unused;
    uintptr_t held = (uintptr_t)malloc(700);
    // The value lives in a register only: the loop never stores it.
    ready++;
    for (;;) __asm__ volatile("" : "+r"(held));
    return NULL;
}

// Conservative scanners (valgrind, leaktrace) see any word on a live stack: dead frames
// below main's, reused by later calls, still hold the pointers malloc returned. Zeroing them
// after the setup makes both see the same stack.
NOINLINE static void scrub_stack(void) {
    // Volatile stores: a memset of a dying local may be left out by the compiler.
    volatile char dead_frames[64 << 10];
    for (size_t i = 0; i < sizeof dead_frames; i++) dead_frames[i] = 0;
}

int main(int argc, char **argv) {
    int wait_mode = argc > 2 && strcmp(argv[1], "wait") == 0;
    if (wait_mode)
        while (access(argv[2], F_OK) != 0) usleep(10 * 1000);
    keep_in_global();
    keep_in_tls();
    lose_plainly();
    lose_cycle();
    lose_parent();
    keep_interior();
    pthread_t t1, t2;
    pthread_create(&t1, NULL, keep_on_stack, NULL);
    pthread_create(&t2, NULL, keep_in_register, NULL);
    while (ready < 2) usleep(1000);
    for (int i = 0; i < 64; i++) grow_cache(i);
    scrub_stack();
    if (!wait_mode) exit(0);
    for (int i = 64;; i++) {
        if (i < 1024) grow_cache(i);
        usleep(50 * 1000);
    }
}
