// Starts exactly 3000 goroutines that never end, each from a different depth of recursion,
// so that some of the `go` statements run when the stack must grow (runtime.newproc then
// starts over after morestack): leaktrace must count each goroutine once.
package main

import (
	"fmt"
	"time"
)

var block = make(chan int)

//go:noinline
func spawnAt(depth int, pad [64]byte) int {
	if depth > 0 {
		return spawnAt(depth-1, pad) + int(pad[depth%64])
	}
	go func() { <-block }() // the counted go statement
	return 0
}

func main() {
	var pad [64]byte
	for i := 0; i < 3000; i++ {
		// A fresh goroutine stack each time, so depths reach its guard at many points.
		done := make(chan int)
		go func(depth int) {
			spawnAt(depth, pad)
			close(done)
		}(i % 400)
		<-done
	}
	fmt.Println("spawned 3000")
	time.Sleep(1500 * time.Millisecond)
}
