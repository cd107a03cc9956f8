# The CPython workloads of `cargo xtask bench` (the cost of reading Python frames):
#   - malloc N: N bytearray(1024), each malloc'd and freed (traced, with its Python frames);
#   - objects N: N small lists, from CPython's own arenas (not traced);
# prints the wall time per operation as ns_per_op=….
import sys
import time


def malloc_path(count):
    for _ in range(count):
        bytearray(1024)


def objects(count):
    for i in range(count):
        [i]


def main():
    workload, count = sys.argv[1], int(sys.argv[2])
    run = {"malloc": malloc_path, "objects": objects}[workload]
    start = time.monotonic_ns()
    run(count)
    print(f"ns_per_op={(time.monotonic_ns() - start) / count:.1f}")


main()
