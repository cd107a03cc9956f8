// Run-mode target: leaks 20 blocks of 1000 bytes with glibc's malloc, then dlopens the plugin
// given as argv[1] (which has its own allocator), waits until a tracer has put a breakpoint
// in the plugin allocator's mi_malloc (at most 20 s), and calls its leaking function 20 times.
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *volatile kept[20];

__attribute__((noinline)) void host_leak(int i) { kept[i] = malloc(1000); }

int main(int argc, char **argv) {
    for (int i = 0; i < 20; i++) host_leak(i);
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void (*leak)(void) = (void (*)(void))dlsym(lib, "plugin_mi_leak");
    volatile unsigned char *mi_malloc = dlsym(lib, "mi_malloc");
    for (int tries = 0; mi_malloc && tries < 200; tries++) {
        int probed = 0;
        for (int i = 0; i < 16; i++) probed |= mi_malloc[i] == 0xcc;
        if (probed) break;
        usleep(100 * 1000);
    }
    usleep(200 * 1000);
    for (int i = 0; i < 20; i++) leak();
    return 0;
}
