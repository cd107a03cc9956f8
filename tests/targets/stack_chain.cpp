// Stack-quality target (C++): main → handle_request → parse_body → store_record → operator
// new (std::string and std::vector), 50 of each kept.
#include <string>
#include <vector>

static std::vector<std::string *> kept;
static std::vector<std::vector<int> *> kept_vectors;

__attribute__((noinline)) void store_record(int i) {
    kept.push_back(new std::string(100 + i, 'x'));
}
__attribute__((noinline)) void parse_body(int i) {
    store_record(i);
    kept_vectors.push_back(new std::vector<int>(50 + i));
    asm volatile("");
}
__attribute__((noinline)) void handle_request(int i) {
    parse_body(i);
    asm volatile("");
}
int main() {
    kept.reserve(100);
    kept_vectors.reserve(100);
    for (int i = 0; i < 50; i++) handle_request(i);
    return 0;
}
