// A program that starts its children the ways test runners and build tools do, for
// `leaktrace run --trace-children` against valgrind --trace-children=yes. Run with no
// argument (or with OTHER, the path of another build of this program), it starts:
//   posix_spawn  itself as "spawned":  spawned_lose loses 7 × 211 bytes, exit status 11
//   vfork+execv  itself as "vforked":  vforked_lose loses 5 × 99 bytes, exit status 12
//   fork+execv   OTHER (or itself) as "forked": forked_lose loses 4 × 333 bytes, exit
//                status 13 (OTHER may use another allocator than this program)
//   a thread's fork (no exec): thread_forked_lose loses 6 × 77 bytes, exit status 14
// then waits for each and exits with status 3. The parent loses nothing.
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

extern char **environ;

NOINLINE static void *spawned_lose(void) { return malloc(211); }
NOINLINE static void *vforked_lose(void) { return malloc(99); }
NOINLINE static void *forked_lose(void) { return malloc(333); }
NOINLINE static void *thread_forked_lose(void) { return malloc(77); }

NOINLINE static void lose(void *(*make)(void), int times, int size) {
    for (int i = 0; i < times; i++) {
        void *volatile block = make();
        memset(block, i + 1, size);
        ESCAPE(block);
    }
}

static int wait_for(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Forks from a thread other than the first; the child loses its blocks and exits.
static void *fork_from_thread(void *unused) {
    (void)unused;
    pid_t child = fork();
    if (child == 0) {
        lose(thread_forked_lose, 6, 77);
        exit(14);
    }
    return (void *)(long)wait_for(child);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "spawned") == 0) {
        lose(spawned_lose, 7, 211);
        return 11;
    }
    if (argc > 1 && strcmp(argv[1], "vforked") == 0) {
        lose(vforked_lose, 5, 99);
        return 12;
    }
    if (argc > 1 && strcmp(argv[1], "forked") == 0) {
        lose(forked_lose, 4, 333);
        return 13;
    }
    const char *self = "/proc/self/exe";
    char path[4096];
    ssize_t length = readlink(self, path, sizeof path - 1);
    if (length <= 0) {
        perror("readlink");
        return 1;
    }
    path[length] = 0;
    const char *other = argc > 1 ? argv[1] : path;

    pid_t spawned;
    char *spawned_argv[] = {path, "spawned", NULL};
    if (posix_spawn(&spawned, path, NULL, NULL, spawned_argv, environ) != 0) {
        perror("posix_spawn");
        return 1;
    }

    char *vforked_argv[] = {path, "vforked", NULL};
    pid_t vforked = vfork();
    if (vforked == 0) {
        execv(path, vforked_argv);
        _exit(127);
    }

    pid_t forked = fork();
    if (forked == 0) {
        char *forked_argv[] = {(char *)other, "forked", NULL};
        execv(other, forked_argv);
        _exit(127);
    }

    pthread_t thread;
    void *d = NULL;
    if (pthread_create(&thread, NULL, fork_from_thread, NULL) != 0 ||
        pthread_join(thread, &d) != 0) {
        perror("pthread");
        return 1;
    }

    int a = wait_for(spawned);
    int b = wait_for(vforked);
    int c = wait_for(forked);
    printf("children exited with %d %d %d %d\n", a, b, c, (int)(long)d);
    return 3;
}
