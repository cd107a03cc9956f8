// Run-mode target: leaks 20 blocks of 1000 bytes with glibc's malloc, then dlopens the plugin
// given as argv[1] (which has its own allocator), waits for the tracer to notice it, and
// calls its leaking function 20 times.
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
    sleep(3);
    for (int i = 0; i < 20; i++) leak();
    return 0;
}
