// Run-mode target: C++ new / new[] leaks, and balanced new/delete.
#include <cstring>
#include <vector>

struct Node { char payload[48]; Node *next; };  // 56 bytes
static Node *volatile head;
static char *volatile arrays[8];

__attribute__((noinline)) void leak_new_object() {
    for (int i = 0; i < 7; i++) { Node *n = new Node; n->next = head; head = n; }
}
__attribute__((noinline)) void leak_new_array() {
    for (int i = 0; i < 5; i++) arrays[i] = new char[1500];
}
__attribute__((noinline)) void balanced_vector() {
    for (int i = 0; i < 100; i++) { std::vector<int> v(100, i); asm volatile("" ::"r"(v.data())); }
}
int main() {
    leak_new_object();
    leak_new_array();
    balanced_vector();
    return 0;
}
