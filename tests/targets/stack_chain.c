// Stack-quality target (C): main → handle_request → parse_body → store_record → malloc, and
// main → handle_request → log_line → malloc; 50 blocks kept from each path. Built with and
// without frame pointers by `cargo xtask bench`.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile kept[100];
static int next;

__attribute__((noinline)) void store_record(int i) {
    char *record = malloc(200 + i);
    memset(record, i, 16);
    kept[next++] = record;
}
__attribute__((noinline)) void parse_body(int i) {
    store_record(i);
    __asm__ volatile("");
}
__attribute__((noinline)) void log_line(int i) {
    char *line = malloc(64);
    snprintf(line, 64, "request %d", i);
    kept[next++] = line;
}
__attribute__((noinline)) void handle_request(int i) {
    parse_body(i);
    log_line(i);
    __asm__ volatile("");
}
int main(void) {
    for (int i = 0; i < 50; i++) handle_request(i);
    return 0;
}
