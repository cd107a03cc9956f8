// Attach-mode target: dlopens the plugin given as argv[1] and calls its leaking function
// every 50 ms (about 22 KB/s), forever.
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void (*leak)(void) = (void (*)(void))dlsym(lib, "plugin_leak");
    for (;;) { leak(); usleep(50 * 1000); }
}
