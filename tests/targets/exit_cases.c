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
//   keep_in_spinning_register  120 bytes still reachable: only a register of a thread that
//                       spins points to it (its stack's dead frames hold copies, not roots)
//   keep_in_blocked_register   136 bytes still reachable: only a register of a thread
//                       blocked in a system call points to it
//   lose_on_live_thread 312 bytes definitely lost: a sleeping thread dropped it in a frame
//                       that returned
//   lose_on_ended_thread  328 bytes definitely lost: dropped the same way by a thread that
//                       ended and was joined (glibc keeps its stack mapped)
//   lose_thread_argument  232 bytes definitely lost: a thread's argument, dropped after join
//   lose_thread_result  248 bytes definitely lost: a thread's return value, dropped after join
//   keep_unjoined_result  264 bytes still reachable: the return value of a thread that ended
//                       and was never joined (glibc keeps it in the thread's descriptor)
//   keep_in_specific    200 bytes still reachable: pthread_setspecific of the main thread
//                       (its descriptor shares one mapping with a chunk malloc mapped)
//   keep_in_thread_specific  216 bytes still reachable: pthread_setspecific of a live thread
//   keep_as_integer     152 bytes still reachable: stored as a uintptr_t
//   lose_unaligned      168 bytes definitely lost: its only copy is at an unaligned address
//   lose_self_pointing  184 bytes definitely lost: it points to itself, nothing else does
//   keep_huge           256 KiB still reachable (a global points to it); malloc maps a
//                       block this big by itself
//   lose_huge           256 KiB definitely lost (not bigger: under valgrind blocks lie at
//                       low addresses, and any stray integer inside a block's range, a time
//                       in nanoseconds, say, makes it "possibly lost" there)
//   lose_realloc_zero   realloc(NULL, 0): a zero-byte block definitely lost; realloc(p, 0)
//                       of another block frees it (gone_in_realloc: nothing left)
//   keep_on_coroutine   296 bytes still reachable: only the frame of a swapcontext
//                       coroutine, on a heap-allocated stack, points to it
//   keep_in_static_tls  360 bytes still reachable: only a thread-local of the main thread
//                       points to it
// With the path of the library built from exit_cases_tls.c as its argument, it also loads it
// with dlopen and:
//   keep_in_dynamic_tls 344 bytes still reachable: only the library's thread-local (dynamic
//                       TLS, which the loader allocated) points to it
// With "clean" it frees everything it allocates and exits with status 3. With "register":
//   keep_in_saved_register  24 bytes still reachable: only callee-saved registers point to
//                       it when main calls exit(), and the exit path saves them in frames of
//                       its own before it uses them; exits with status 0.
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
// Makes the compiler believe `p` escapes, so the allocation and the stores into it stay.
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

void *volatile global_once;
void *volatile global_huge;
uintptr_t volatile global_integer;
char volatile global_bytes[64];
void *volatile coroutine_stack;
static volatile int thread_ready;
static pthread_key_t key;
static __thread void *volatile static_tls_slot;
static ucontext_t main_context, coroutine_context;

NOINLINE static void *lose_in_loop(void) { return malloc(48); }
NOINLINE static void *lose_after_printf(void) { return malloc(72); }
NOINLINE static void *lose_zero(void) { return malloc(0); }
NOINLINE static void *lose_in_dead_frame(void) { return malloc(40); }
NOINLINE static void *keep_once(void) { return malloc(100); }
NOINLINE static void *keep_in_main(void) { return malloc(64); }
NOINLINE static void *keep_on_thread(void) { return malloc(256); }
NOINLINE static void *keep_in_saved_register(void) { return malloc(24); }
NOINLINE static void *keep_in_spinning_register(void) { return malloc(120); }
NOINLINE static void *keep_in_blocked_register(void) { return malloc(136); }
NOINLINE static void *lose_on_live_thread(void) { return malloc(312); }
NOINLINE static void *lose_on_ended_thread(void) { return malloc(328); }
NOINLINE static void *lose_thread_argument(void) { return malloc(232); }
NOINLINE static void *lose_thread_result(void) { return malloc(248); }
NOINLINE static void *keep_unjoined_result(void) { return malloc(264); }
NOINLINE static void *keep_in_specific(void) { return malloc(200); }
NOINLINE static void *keep_in_thread_specific(void) { return malloc(216); }
NOINLINE static void *keep_as_integer(void) { return malloc(152); }
NOINLINE static void *lose_unaligned(void) { return malloc(168); }
NOINLINE static void *lose_self_pointing(void) { return malloc(184); }
NOINLINE static void *keep_huge(void) { return malloc(256 << 10); }
NOINLINE static void *lose_huge(void) { return malloc(256 << 10); }
NOINLINE static void *lose_realloc_zero(void) { return realloc(NULL, 0); }
NOINLINE static void *gone_in_realloc(void) { return malloc(280); }
NOINLINE static void *keep_on_coroutine(void) { return malloc(296); }
NOINLINE static void *keep_in_static_tls(void) { return malloc(360); }

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

// Allocates, then keeps the pointer in r12 only and spins.
static void *spinner(void *unused) {
    (void)unused;
    void *p = keep_in_spinning_register();
    memset(p, 7, 120);
    __asm__ volatile("mov %0, %%r12\n\t"
                     "xor %0, %0\n\t"
                     "movl $1, thread_ready(%%rip)\n\t"
                     "1: pause\n\t"
                     "jmp 1b"
                     : "+r"(p)
                     :
                     : "r12", "memory");
    return NULL;
}

// Allocates, then keeps the pointer in r13 only and waits in pause(2), called directly.
static void *blocker(void *unused) {
    (void)unused;
    void *p = keep_in_blocked_register();
    memset(p, 8, 136);
    __asm__ volatile("mov %0, %%r13\n\t"
                     "xor %0, %0\n\t"
                     "movl $1, thread_ready(%%rip)\n\t"
                     "1: mov $34, %%eax\n\t"
                     "syscall\n\t"
                     "jmp 1b"
                     : "+r"(p)
                     :
                     : "r13", "rax", "rcx", "r11", "memory");
    return NULL;
}

NOINLINE static void drop_on_live_thread(void) {
    void *volatile local = lose_on_live_thread();
    memset(local, 9, 312);
}

static void *dropper(void *unused) {
    (void)unused;
    drop_on_live_thread();
    thread_ready = 1;
    for (;;) {
        pause();
    }
    return NULL;
}

NOINLINE static void drop_on_ended_thread(void) {
    void *volatile local = lose_on_ended_thread();
    memset(local, 10, 328);
}

static void *ender(void *unused) {
    (void)unused;
    drop_on_ended_thread();
    return NULL;
}

static void *argument_user(void *argument) {
    memset(argument, 11, 232);
    return NULL;
}

static void *returner(void *unused) {
    (void)unused;
    void *result = lose_thread_result();
    memset(result, 12, 248);
    return result;
}

static void *unjoined(void *unused) {
    (void)unused;
    void *result = keep_unjoined_result();
    memset(result, 13, 264);
    return result;
}

static void *specific_holder(void *unused) {
    (void)unused;
    pthread_setspecific(key, keep_in_thread_specific());
    thread_ready = 1;
    for (;;) {
        pause();
    }
    return NULL;
}

static void coroutine(void) {
    void *volatile held = keep_on_coroutine();
    memset(held, 14, 296);
    swapcontext(&coroutine_context, &main_context);
}

// Starts `body` and waits until it says it is ready.
static void start_ready(void *(*body)(void *)) {
    pthread_t thread;
    thread_ready = 0;
    pthread_create(&thread, NULL, body, NULL);
    while (!thread_ready) {
        usleep(1000);
    }
}

NOINLINE static void drop_odd_ones(void) {
    void *volatile unaligned = lose_unaligned();
    memcpy((char *)global_bytes + 3, (void *)&unaligned, sizeof unaligned);
    void **self = lose_self_pointing();
    self[0] = self;
    void *volatile huge = lose_huge();
    memset(huge, 15, 64);
    void *volatile zero = lose_realloc_zero();
    ESCAPE(zero);
    void *volatile gone = realloc(gone_in_realloc(), 0);
    ESCAPE(gone);
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
    if (argc > 1 && strchr(argv[1], '/') != NULL) {
        void *library = dlopen(argv[1], RTLD_NOW);
        void (*fill)(void) = library ? (void (*)(void))dlsym(library, "fill_dynamic_tls") : NULL;
        if (fill == NULL) {
            fprintf(stderr, "exit_cases: %s: %s\n", argv[1], dlerror());
            return 1;
        }
        fill();
    }
    static_tls_slot = keep_in_static_tls();
    memset(static_tls_slot, 17, 360);
    pthread_key_create(&key, NULL);
    pthread_setspecific(key, keep_in_specific());
    global_huge = keep_huge();
    global_once = keep_once();
    memset(global_once, 4, 100);
    global_integer = (uintptr_t)keep_as_integer();
    FILE *sink = fopen("/dev/null", "w");
    drop_in_loop();
    drop_after_printf(sink);
    drop_zero();
    drop_in_helper();
    drop_odd_ones();
    fclose(sink);
    pthread_t thread;
    pthread_create(&thread, NULL, argument_user, lose_thread_argument());
    pthread_join(thread, NULL);
    void *result;
    pthread_create(&thread, NULL, returner, NULL);
    pthread_join(thread, &result);
    ESCAPE(result);
    result = NULL;
    pthread_create(&thread, NULL, ender, NULL);
    pthread_join(thread, NULL);
    pthread_create(&thread, NULL, unjoined, NULL);
    coroutine_stack = malloc(65536);
    getcontext(&coroutine_context);
    coroutine_context.uc_stack.ss_sp = coroutine_stack;
    coroutine_context.uc_stack.ss_size = 65536;
    coroutine_context.uc_link = &main_context;
    makecontext(&coroutine_context, coroutine, 0);
    swapcontext(&main_context, &coroutine_context);
    start_ready(sleeper);
    start_ready(spinner);
    start_ready(blocker);
    start_ready(dropper);
    start_ready(specific_holder);
    void *volatile held = keep_in_main();
    memset(held, 5, 64);
    // Long enough for leaktrace's samples to see the blocks held.
    usleep(300000);
    exit(0);
}
