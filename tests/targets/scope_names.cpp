// Request handlers as g++ -O2 leaves them, for --scope by the names users write. A call
// about every millisecond until killed, each keeping 128 bytes (a record on a global list)
// and freeing what else it allocates:
//   qz_ingest_record(kind, id)   static, always called with the same kind: g++ emits only a
//                                clone of it (qz_ingest_record.constprop.0, say), no symbol
//                                of that name; allocates 256 + 128 bytes a call
//   ingest::Parser::parse        two overloads, parse(const char *) and parse(long), called
//                                in turn; allocates 64 + 128 bytes a call
#include <cstdlib>
#include <cstring>
#include <ctime>

#define NOINLINE __attribute__((noinline))
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

struct record {
    record *next;
    char data[120];
};

static record *volatile kept;

NOINLINE static void keep_record(long id) {
    auto *entry = static_cast<record *>(malloc(sizeof(record)));
    memset(entry->data, static_cast<int>(id), sizeof entry->data);
    entry->next = kept;
    kept = entry;
}

NOINLINE static int qz_ingest_record(int kind, long id) {
    char *scratch = static_cast<char *>(malloc(256));
    memset(scratch, kind, 256);
    ESCAPE(scratch);
    keep_record(id + kind);
    int first = scratch[id % 256];
    free(scratch);
    return first;
}

namespace ingest {
struct Parser {
    NOINLINE int parse(const char *text);
    NOINLINE int parse(long value);
};

NOINLINE int Parser::parse(const char *text) {
    char *copy = static_cast<char *>(malloc(64));
    strncpy(copy, text, 63);
    copy[63] = 0;
    ESCAPE(copy);
    keep_record(copy[0]);
    int first = copy[0];
    free(copy);
    return first;
}

NOINLINE int Parser::parse(long value) {
    char *digits = static_cast<char *>(malloc(64));
    memset(digits, static_cast<int>(value), 64);
    ESCAPE(digits);
    keep_record(value);
    int first = digits[0];
    free(digits);
    return first;
}
}  // namespace ingest

int main() {
    ingest::Parser parser;
    const timespec pause = {0, 1000000};
    for (long id = 0;; id++) {
        qz_ingest_record(7, id);
        if (id % 2 == 0) {
            parser.parse("text");
        } else {
            parser.parse(id);
        }
        nanosleep(&pause, nullptr);
    }
}
