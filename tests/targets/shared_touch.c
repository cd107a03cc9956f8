// Touches memory page by page for SECONDS seconds, 8 MiB a second, the way a database fills
// its shared buffers (`shared_touch shared SECONDS`: a shared anonymous mapping, counted in
// RSS as shared memory, not the process's own) or the way a leak grows (`shared_touch
// private SECONDS`: private anonymous memory).
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        return 2;
    }
    int shared = strcmp(argv[1], "shared") == 0;
    int seconds = atoi(argv[2]);
    size_t size = (size_t)(seconds + 1) * (8 << 20);
    char *memory = mmap(NULL, size, PROT_READ | PROT_WRITE,
                        (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED) {
        return 1;
    }
    const struct timespec tick = {0, 100 * 1000 * 1000};
    for (int step = 0; step < seconds * 10; step++) {
        // 800 KiB every 100 ms.
        memset(memory + (size_t)step * (800 << 10), step, 800 << 10);
        nanosleep(&tick, NULL);
    }
    return 0;
}
