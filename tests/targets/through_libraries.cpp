// A program built with frame pointers that leaks through library functions built without
// them (glibc's strdup, asprintf, getline and fopen; libstdc++'s std::string), each from a
// function of its own, 50 times. Under `--unwind fp` a walk stops in the library; each way
// that follows the libraries' tables names the leaking function and its callers.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#define NOINLINE __attribute__((noinline))

static void *volatile kept[5][50];

NOINLINE static void leak_via_strdup(int i) { kept[0][i] = strdup("a string to copy"); }

NOINLINE static void leak_via_asprintf(int i) {
    char *text = nullptr;
    if (asprintf(&text, "number %d", i) > 0) {
        kept[1][i] = text;
    }
}

NOINLINE static void leak_via_getline(int i, FILE *input) {
    char *line = nullptr;
    size_t size = 0;
    rewind(input);
    if (getline(&line, &size, input) > 0) {
        kept[2][i] = line;
    }
}

NOINLINE static void leak_via_fopen(int i) { kept[3][i] = fopen("/dev/null", "r"); }

// The strings live in static storage that is never destroyed: their buffers, which
// libstdc++ allocates, are the only blocks of this case.
alignas(std::string) static char strings[50][sizeof(std::string)];

NOINLINE static void leak_via_string(int i) {
    auto *text = new (strings[i]) std::string();
    text->reserve(200);
    kept[4][i] = text;
}

NOINLINE static void leak_everything(FILE *input) {
    for (int i = 0; i < 50; i++) {
        leak_via_strdup(i);
        leak_via_asprintf(i);
        leak_via_getline(i, input);
        leak_via_fopen(i);
        leak_via_string(i);
    }
}

int main() {
    FILE *input = fopen("/proc/self/cmdline", "r");
    if (input == nullptr) {
        return 1;
    }
    leak_everything(input);
    fclose(input);
    return 0;
}
