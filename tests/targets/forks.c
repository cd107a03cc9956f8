// A program whose forked children leak, for `leaktrace run` against valgrind (which
// reports every process it traced, each with its own summary):
//   parent_lose      the parent loses 2 × 500 bytes, allocated before and after the fork
//   child_lose       the first child loses 10 × 1337 bytes and exits with status 4
//   grandchild_lose  a child of the second child loses 3 × 96 bytes and exits with status 0
//   child_keep       the second child keeps 4096 bytes in a global (still reachable) and
//                    waits for the grandchild
//   exec_child       a third child executes /bin/true: it is not followed (without
//                    --trace-children) and reports nothing
// Every child also holds copies of the parent's blocks (inherited, not its own).
// The parent waits for each child and exits with status 5.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

void *volatile kept;
void *volatile inherited;

NOINLINE static void *parent_lose(void) { return malloc(500); }
NOINLINE static void *child_lose(void) { return malloc(1337); }
NOINLINE static void *grandchild_lose(void) { return malloc(96); }
NOINLINE static void *child_keep(void) { return malloc(4096); }

NOINLINE static void lose(void *(*make)(void), int times, int size) {
    for (int i = 0; i < times; i++) {
        void *volatile block = make();
        memset(block, i, size);
        ESCAPE(block);
    }
}

static int wait_for(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(void) {
    inherited = malloc(256);  // still reachable in the parent, inherited by every child
    lose(parent_lose, 1, 500);

    pid_t first = fork();
    if (first == 0) {
        lose(child_lose, 10, 1337);
        exit(4);
    }

    pid_t second = fork();
    if (second == 0) {
        kept = child_keep();
        memset(kept, 7, 4096);
        pid_t grandchild = fork();
        if (grandchild == 0) {
            lose(grandchild_lose, 3, 96);
            _exit(0);
        }
        exit(wait_for(grandchild));
    }

    pid_t third = fork();
    if (third == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }

    lose(parent_lose, 1, 500);
    int first_status = wait_for(first);
    int second_status = wait_for(second);
    int third_status = wait_for(third);
    printf("children exited with %d %d %d\n", first_status, second_status, third_status);
    return 5;
}
