// Command tern-monitor runs one container under runc for ternd and stays
// with it to the end: it logs the container's output, reaps it, and records
// its exit status, so that the container outlives ternd. ternd starts it
// (see runtime.Runtime.Start); it is not meant to be run by hand.
package main

import (
	"os"

	"github.com/tern-iot/tern/internal/runtime/monitor"
)

func main() {
	os.Exit(monitor.Run(os.Args[1:]))
}
