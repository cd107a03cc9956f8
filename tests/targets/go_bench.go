// The Go workloads of `cargo xtask bench` (the cost of leaktrace's Go probes):
//   - alloc N: N heap allocations of 64 bytes (one span refill per 128 of them);
//   - goroutines N: N goroutines started and ended, 1000 at a time;
//
// prints the wall time per operation as ns_per_op=….
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

var sink []byte

func allocate(count int) {
	for i := 0; i < count; i++ {
		sink = make([]byte, 64)
	}
}

func startGoroutines(count int) {
	var wg sync.WaitGroup
	for done := 0; done < count; done += 1000 {
		wg.Add(1000)
		for i := 0; i < 1000; i++ {
			go wg.Done()
		}
		wg.Wait()
	}
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go_bench alloc|goroutines COUNT")
		os.Exit(2)
	}
	count, err := strconv.Atoi(os.Args[2])
	if err != nil || count <= 0 {
		fmt.Fprintln(os.Stderr, "COUNT must be a positive number")
		os.Exit(2)
	}
	start := time.Now()
	switch os.Args[1] {
	case "alloc":
		allocate(count)
	case "goroutines":
		startGoroutines(count)
	default:
		fmt.Fprintln(os.Stderr, "unknown workload", os.Args[1])
		os.Exit(2)
	}
	fmt.Printf("ns_per_op=%.1f\n", float64(time.Since(start).Nanoseconds())/float64(count))
}
