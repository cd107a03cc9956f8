// Run-mode target for --sample-rate: leak_sampled keeps 20000 blocks of 100 bytes; churn
// allocates and frees 200000; resized grows 5000 blocks with realloc and frees them all.
#include <stdlib.h>

#define LEAKED 20000
#define RESIZED 5000
static void *volatile kept[LEAKED];
static void *volatile resizing[RESIZED];

__attribute__((noinline)) void leak_sampled(void) {
    for (int i = 0; i < LEAKED; i++) kept[i] = malloc(100);
}
__attribute__((noinline)) void churn(void) {
    for (int i = 0; i < 200000; i++) { char *volatile p = malloc(48); free(p); }
}
__attribute__((noinline)) void resized(void) {
    for (int i = 0; i < RESIZED; i++) resizing[i] = malloc(64);
    for (int i = 0; i < RESIZED; i++) resizing[i] = realloc(resizing[i], 4096);
    for (int i = 0; i < RESIZED; i++) free(resizing[i]);
}
int main(void) {
    leak_sampled();
    churn();
    resized();
    return 0;
}
