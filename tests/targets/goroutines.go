// A Go service with two leaks, for leaktrace's Go support (tests/tests/runtimes.rs):
//   - handleSubscribe starts a goroutine per request that waits forever on a channel
//     nobody writes (a goroutine leak at one `go` statement);
//   - handleUpload appends every request's payload to a package-level slice (heap growth
//     from one function);
//
//   - handleArchive keeps a 64 KiB blob every tenth request (large objects: a span each);
//
// and handleEcho, whose goroutines finish (the control).
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

var uploads [][]byte
var archives [][]byte

//go:noinline
func handleSubscribe(id int) {
	wait := make(chan int)
	go func() { // leaks: nobody ever sends on wait
		<-wait
	}()
	_ = id
}

//go:noinline
func handleEcho(id int) {
	done := make(chan int)
	go func() {
		done <- id
	}()
	<-done
}

//go:noinline
func handleUpload(id int) {
	payload := make([]byte, 16<<10) // leaks: kept in uploads
	payload[0] = byte(id)
	uploads = append(uploads, payload)
}

//go:noinline
func handleArchive(id int) {
	blob := make([]byte, 64<<10) // leaks: a large object kept in archives
	blob[0] = byte(id)
	archives = append(archives, blob)
}

func main() {
	seconds := 3600
	if len(os.Args) > 1 {
		seconds, _ = strconv.Atoi(os.Args[1])
	}
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	fmt.Println("ready")
	for i := 0; time.Now().Before(deadline); i++ {
		handleSubscribe(i)
		handleEcho(i)
		handleEcho(i)
		handleUpload(i)
		if i%10 == 0 {
			handleArchive(i)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
