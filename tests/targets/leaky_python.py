# A Python service leaking through a native path (tests/tests/runtimes.rs): cache_request keeps every request's
# bytearray (its buffer comes from malloc: CPython hands blocks over 512 bytes to the
# system allocator); handle_read's are freed at once.
import sys
import time

CACHE = []


def cache_request(i):
    CACHE.append(bytearray(16 * 1024))  # leaks: kept in CACHE


def handle_read(i):
    scratch = bytearray(16 * 1024)
    return len(scratch) + i


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3600.0
    deadline = time.monotonic() + seconds
    print("ready", flush=True)
    i = 0
    while time.monotonic() < deadline:
        for _ in range(10):
            cache_request(i)
            handle_read(i)
            i += 1
        time.sleep(0.1)


main()
