// The Go heap profile workload of `cargo xtask bench`: what reading the runtime's heap
// profile costs leaktrace. Every allocation is recorded (MemProfileRate 1) from 225
// distinct stacks (a(i) calling b(j)) in 40 sizes, a few thousand buckets; the objects are
// kept, the program prints "ready" and waits to be read.
package main

import (
	"fmt"
	"runtime"
	"time"
)

var keep [][]byte

//go:noinline
func b(depth, size int) {
	if depth == 0 {
		keep = append(keep, make([]byte, size))
		return
	}
	b(depth-1, size)
}

//go:noinline
func a(depth, inner, size int) {
	if depth == 0 {
		b(inner, size)
		return
	}
	a(depth-1, inner, size)
}

func main() {
	runtime.MemProfileRate = 1
	for i := 0; i < 15; i++ {
		for j := 0; j < 15; j++ {
			for k := 1; k <= 40; k++ {
				a(i, j, 16*k)
			}
		}
	}
	// Keeps runtime.MemProfile linked in: without it the linker turns the profile off.
	records, _ := runtime.MemProfile(nil, true)
	fmt.Println("ready", records)
	time.Sleep(time.Hour)
}
