// Command ternd is Tern's device agent. It runs each app in its own container under
// runc, supervises it, and installs signed updates.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "ternd: the device agent is not built yet")
	os.Exit(2)
}
