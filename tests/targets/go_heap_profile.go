// A Go service whose heap profile is on (it can write one, as a service importing
// runtime/pprof or net/http/pprof can), for leaktrace's reading of Go's own heap profile
// (tests/tests/runtimes.rs):
//   - handleSubscribe starts a goroutine per request that waits forever on a channel
//     nobody writes (a goroutine leak);
//   - handleUpload appends every request's payload to a package-level slice (a growing
//     slice of small objects, which the profile names);
//   - handleArchive keeps a 64 KiB blob every tenth request (large objects, a span each);
//
// and handleEcho, whose goroutines finish and whose channels are garbage (the control:
// its channels share a size class with handleSubscribe's, which stay).
//
// With HEAP_PROFILE=FILE it writes the heap profile (what `go tool pprof -inuse_space`
// reads) to FILE when its time is up, with the collector stopped first: the profile it
// writes is then the one its process holds when it exits.
package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"runtime/pprof"
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
	done := make(chan int) // garbage once the goroutine has answered
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

func writeHeapProfile(path string) {
	debug.SetGCPercent(-1)
	file, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := pprof.WriteHeapProfile(file); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	file.Close()
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
	if path := os.Getenv("HEAP_PROFILE"); path != "" {
		writeHeapProfile(path)
	}
}
