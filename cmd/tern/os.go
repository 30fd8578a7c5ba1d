package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/app"
)

// osCmd is `tern os`: building OS images for A/B updates.
func osCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "os", Short: "Build signed OS images for A/B updates"}
	var opts app.OSBuildOptions
	var keyPaths []string
	var out string
	build := &cobra.Command{
		Use:   "build --image ROOTFS.img --version V --device-type T --key K.key -o os.tern",
		Short: "Build a signed OS package from a root file system image",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			keys, err := loadPrivateKeys(keyPaths)
			if err != nil {
				return err
			}
			opts.Keys = keys
			if out == "" {
				out = fmt.Sprintf("os-%s.tern", opts.Version)
			}
			pm, err := app.BuildOSFile(cmd.Context(), opts, out)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "built %s: OS %s for %v, image %d bytes, payload %d bytes, signed by %d key(s)\n",
				out, pm.OS.Version, pm.OS.DeviceTypes, pm.OS.Image.Size, pm.OS.Payload.Size, len(keys))
			return nil
		},
	}
	f := build.Flags()
	f.StringVar(&opts.Image, "image", "", "root file system image (raw)")
	f.StringVar(&opts.Version, "version", "", "OS version (semver)")
	f.StringArrayVar(&opts.DeviceTypes, "device-type", nil, "compatible device type (repeatable)")
	f.BoolVar(&opts.AllowDowngrade, "allow-downgrade", false, "let devices install this below their committed OS version")
	f.StringArrayVar(&keyPaths, "key", nil, "release private key (repeatable)")
	f.StringVarP(&out, "output", "o", "", "package file (default os-VERSION.tern)")
	for _, n := range []string{"image", "version", "device-type", "key"} {
		build.MarkFlagRequired(n)
	}
	cmd.AddCommand(build)
	return cmd
}

// deviceOSCmd is `tern device os`: OS updates of one device.
func deviceOSCmd(client func() (*agent.Client, error), asJSON *bool) *cobra.Command {
	cmd := &cobra.Command{Use: "os", Short: "The device's OS: status and A/B updates"}
	install := &cobra.Command{
		Use: "install os.tern", Short: "Write an OS image to the inactive slot and reboot into it once", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := c.InstallOS(cmd.Context(), f)
			if err != nil {
				return fmt.Errorf("os install %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OS written to slot; update %s (the device reboots to try it)\n", dash(st.Update))
			return nil
		},
	}
	status := &cobra.Command{
		Use: "status [--json]", Short: "Booted slot, OS versions, update in progress", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			st, err := c.OSStatus(cmd.Context())
			if err != nil {
				return err
			}
			if *asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintf(tw, "Device type:\t%s\nBooted slot:\t%s\nOS version:\t%s\nCommitted slot:\t%s\nUpdate:\t%s\n",
				st.DeviceType, st.Booted, dash(st.Version), st.Committed, dash(st.Update))
			slots := make([]string, 0, len(st.Slots))
			for s := range st.Slots {
				slots = append(slots, s)
			}
			sort.Strings(slots)
			for _, s := range slots {
				fmt.Fprintf(tw, "Slot %s:\t%s\n", s, dash(st.Slots[s]))
			}
			return tw.Flush()
		},
	}
	status.Flags().BoolVar(asJSON, "json", false, "print JSON")
	cmd.AddCommand(install, status)
	return cmd
}
