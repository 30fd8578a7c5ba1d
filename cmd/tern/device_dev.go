package main

import "github.com/spf13/cobra"

// addDevCommands adds the developer-mode verbs (dev, discover, select, push, exec)
// to `tern device`. Developer mode is not built yet: none.
func addDevCommands(cmd *cobra.Command, device *string) {}
