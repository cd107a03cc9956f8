// What a program still holds when it exits, case by case, for `leaktrace run` against
// valgrind's memcheck (both judge at exit). Each case allocates from a function of its own:
//   lose_in_loop        3 × 48 bytes definitely lost: dropped one after another in a loop
//   lose_after_printf   72 bytes definitely lost: its address was printed, then dropped
//                       (copies stay in the dead frames of fprintf's callees)
//   lose_zero           a zero-byte block definitely lost
//   lose_in_dead_frame  40 bytes definitely lost: its only pointer is in the frame of a
//                       helper that has returned
//   keep_once           100 bytes still reachable: allocated at start, kept in a global
//   keep_in_main        64 bytes still reachable: only main's live frame points to it when
//                       main calls exit()
//   keep_on_thread      256 bytes still reachable: only a sleeping thread's stack points to it
// With "clean" it frees everything it allocates and exits with status 3. With "register":
//   keep_in_saved_register  24 bytes still reachable: only callee-saved registers point to
//                       it when main calls exit(), and the exit path saves them in frames of
//                       its own before it uses them; exits with status 0.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
// Makes the compiler believe `p` escapes, so the allocation and the stores into it stay.
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

void *volatile global_once;
static volatile int thread_ready;

NOINLINE static void *lose_in_loop(void) { return malloc(48); }
NOINLINE static void *lose_after_printf(void) { return malloc(72); }
NOINLINE static void *lose_zero(void) { return malloc(0); }
NOINLINE static void *lose_in_dead_frame(void) { return malloc(40); }
NOINLINE static void *keep_once(void) { return malloc(100); }
NOINLINE static void *keep_in_main(void) { return malloc(64); }
NOINLINE static void *keep_on_thread(void) { return malloc(256); }
NOINLINE static void *keep_in_saved_register(void) { return malloc(24); }

// Leaves its block's only pointer in its own frame, which is dead once it returns.
NOINLINE static void drop_in_helper(void) {
    void *volatile local = lose_in_dead_frame();
    memset(local, 1, 40);
}

NOINLINE static void drop_in_loop(void) {
    for (int i = 0; i < 3; i++) {
        char *volatile p = lose_in_loop();
        memset(p, i, 48);
    }
}

NOINLINE static void drop_after_printf(FILE *sink) {
    char *volatile p = lose_after_printf();
    memset(p, 2, 72);
    fprintf(sink, "%p %s\n", (void *)p, "printed");
    fflush(sink);
}

NOINLINE static void drop_zero(void) {
    void *volatile p = lose_zero();
    ESCAPE(p);
}

static void *sleeper(void *unused) {
    (void)unused;
    void *volatile held = keep_on_thread();
    memset(held, 3, 256);
    thread_ready = 1;
    for (;;) {
        pause();
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "clean") == 0) {
        for (int i = 0; i < 100; i++) {
            free(malloc(64 + i));
        }
        return 3;
    }
    if (argc > 1 && strcmp(argv[1], "register") == 0) {
        void *p = keep_in_saved_register();
        memset(p, 6, 24);
        // exit(0) with the pointer in rbx (and wherever else the compiler keeps it across
        // memset: a callee-saved register too), in no memory of main's.
        __asm__ volatile("mov %0, %%rbx\n\txor %%edi, %%edi\n\tcall exit"
                         :
                         : "r"(p)
                         : "rbx", "rdi", "memory");
        __builtin_unreachable();
    }
    global_once = keep_once();
    memset(global_once, 4, 100);
    FILE *sink = fopen("/dev/null", "w");
    drop_in_loop();
    drop_after_printf(sink);
    drop_zero();
    drop_in_helper();
    fclose(sink);
    pthread_t thread;
    pthread_create(&thread, NULL, sleeper, NULL);
    while (!thread_ready) {
        usleep(1000);
    }
    void *volatile held = keep_in_main();
    memset(held, 5, 64);
    // Long enough for leaktrace's samples to see the blocks held.
    usleep(300000);
    exit(0);
}
