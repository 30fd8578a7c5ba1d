// Command tern is the people's tool: app packages, release keys, devices and the
// fleet. Commands here parse flags and call into internal packages; nothing else.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries an exit code other than 1 out of a command (tern device exec
// passes on the remote command's), printed as nothing but the code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	root := &cobra.Command{
		Use:           "tern",
		Short:         "Build, sign and ship apps to secure Linux devices",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(keysCmd(), appCmd(), deviceCmd(), osCmd(), serverCmd(), fleetCmd())
	if err := root.Execute(); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			// A remote command's own exit code: its stderr already said why.
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "tern:", err)
		os.Exit(1)
	}
}
