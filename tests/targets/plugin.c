// A shared library loaded with dlopen by plugin_host.c; plugin_leak leaks 1111 bytes a call.
#include <stdlib.h>
#include <string.h>
static void *volatile kept[100000];
static int n;
__attribute__((noinline)) void plugin_leak(void) {
    char *p = malloc(1111);
    memset(p, 1, 1111);
    kept[n++ % 100000] = p;
}
