// Request handlers for --scope, called in a loop about every millisecond until killed.
//
//   scope_handlers routes
//     handle_get(route, id)    allocates a 1 KiB response and frees it
//     handle_put(route, id)    allocates a 512-byte buffer and frees it; for route "/cache"
//                              only, it also keeps a 200-byte record (remember_entry)
//     handle_delete(id)        allocates 64 bytes and frees them
//
//   scope_handlers phases GO_FILE
//     handle_request(kind, id) for kinds "/a" and "/b", which free all they allocate; once
//     the file GO_FILE exists, kind "/upload" joins them, and each /upload call keeps 512
//     bytes (stash_upload): a leak that starts when a new kind of request appears.
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

struct record {
    struct record *next;
    char data[192];
};

// Kept records: reachable, but never freed.
static struct record *volatile kept;

NOINLINE void remember_entry(long id) {
    struct record *record = malloc(sizeof *record);
    memset(record->data, (int)id, sizeof record->data);
    record->next = kept;
    kept = record;
}

NOINLINE void stash_upload(long id) {
    struct record *record = malloc(512);
    memset(record, (int)id, 512);
    record->next = kept;
    kept = record;
}

NOINLINE void *respond(size_t size) {
    char *response = malloc(size);
    memset(response, 'r', size);
    ESCAPE(response);
    return response;
}

NOINLINE int handle_get(const char *route, long id) {
    char *response = respond(1024);
    int first = response[id % 1024] + (int)strlen(route);
    free(response);
    return first;
}

NOINLINE int handle_put(const char *route, long id) {
    char *buffer = respond(512);
    if (strcmp(route, "/cache") == 0) remember_entry(id);
    int first = buffer[0];
    free(buffer);
    return first;
}

NOINLINE int handle_delete(long id) {
    char *scratch = respond(64);
    int first = scratch[id % 64];
    free(scratch);
    return first;
}

NOINLINE int handle_request(const char *kind, long id) {
    char *scratch = respond(256);
    if (strcmp(kind, "/upload") == 0) stash_upload(id);
    int first = scratch[0];
    free(scratch);
    return first;
}

static void pause_a_little(void) {
    struct timespec wait = {0, 1000000};
    nanosleep(&wait, NULL);
}

int main(int argc, char **argv) {
    volatile int sink = 0;
    if (argc > 1 && strcmp(argv[1], "routes") == 0) {
        for (long id = 0;; id++) {
            sink += handle_get("/users", id);
            sink += handle_put(id % 2 ? "/cache" : "/session", id);
            sink += handle_delete(id);
            pause_a_little();
        }
    }
    if (argc > 2 && strcmp(argv[1], "phases") == 0) {
        int uploads = 0;
        for (long id = 0;; id++) {
            sink += handle_request(id % 2 ? "/a" : "/b", id);
            if (!uploads && id % 100 == 0) uploads = access(argv[2], F_OK) == 0;
            if (uploads) sink += handle_request("/upload", id);
            pause_a_little();
        }
    }
    return 2;
}
