// Attach-mode target that leaks then exits after argv[1] milliseconds.
#include <stdlib.h>
#include <unistd.h>
static void *volatile kept[1000];
__attribute__((noinline)) void leak_before_exit(int i) { kept[i % 1000] = malloc(200); }
int main(int argc, char **argv) {
    int ms = argc > 1 ? atoi(argv[1]) : 1000;
    for (int i = 0; i < ms / 10; i++) { leak_before_exit(i); usleep(10 * 1000); }
    return 0;
}
