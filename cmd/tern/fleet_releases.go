package main

import (
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

func fleetReleasesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "release", Aliases: []string{"releases"}, Short: "Releases: signed packages uploaded to the server, ready to roll out"}
	var asJSON bool
	create := &cobra.Command{
		Use:   "create NAME APP.tern...",
		Short: "Upload packages as a release (the server verifies them against the account's release keys)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			rel, err := uploadRelease(cmd, args[0], args[1:])
			if err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, rel, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "release %s (%s): %d package(s), %s\n", rel.Name, rel.ID, len(rel.Packages), bytesText(rel.Size))
				writePackages(tw, rel.Packages)
			})
		},
	}
	ls := &cobra.Command{
		Use: "ls", Short: "List releases", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rs []store.Release
			if err := call("GET", "/api/v1/releases", nil, &rs); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, rs, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tID\tPACKAGES\tSIZE\tCREATED")
				for _, r := range rs {
					var pkgs []string
					for _, p := range r.Packages {
						pkgs = append(pkgs, p.Name+"@"+p.Version)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.ID, strings.Join(pkgs, ","), bytesText(r.Size), ago(r.CreatedAt))
				}
			})
		},
	}
	show := &cobra.Command{
		Use: "show NAME|ID", Short: "Show a release's packages", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r store.Release
			if err := call("GET", "/api/v1/releases/"+url.PathEscape(args[0]), nil, &r); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, r, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "release %s (%s), created %s, %s\n", r.Name, r.ID, r.CreatedAt.Local().Format(time.RFC3339), bytesText(r.Size))
				writePackages(tw, r.Packages)
			})
		},
	}
	assign := &cobra.Command{
		Use: "assign NAME|ID DEVICE...", Short: "Give devices a release directly (outside any campaign)", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var all []store.DesiredState
			for _, dev := range args[1:] {
				var d store.DesiredState
				if err := call("PUT", "/api/v1/devices/"+url.PathEscape(dev)+"/desired", map[string]any{"release": args[0]}, &d); err != nil {
					return fmt.Errorf("%s: %w", dev, err)
				}
				all = append(all, d)
			}
			return output(cmd.OutOrStdout(), asJSON, all, func(tw *tabwriter.Writer) {
				for _, d := range all {
					fmt.Fprintf(tw, "%s\tdesired state v%d: release %s\n", d.DeviceID, d.Version, d.Target.ReleaseName)
				}
			})
		},
	}
	desired := &cobra.Command{
		Use: "desired DEVICE", Short: "Show a device's desired state, what it reported about it, and its latest events", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out struct {
				Desired store.DesiredState  `json:"desired"`
				Events  []store.DeviceEvent `json:"events"`
			}
			dev := url.PathEscape(args[0])
			if err := call("GET", "/api/v1/devices/"+dev+"/desired", nil, &out.Desired); err != nil {
				return err
			}
			if err := call("GET", "/api/v1/devices/"+dev+"/events?limit=10", nil, &out.Events); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, out, func(tw *tabwriter.Writer) {
				d := out.Desired
				fmt.Fprintf(tw, "%s: desired state v%d, release %s%s, expires %s\n", d.DeviceID, d.Version, orDash(d.Target.ReleaseName),
					map[bool]string{true: ", campaign " + d.Target.Campaign}[d.Target.Campaign != ""], d.ExpiresAt.Local().Format(time.RFC3339))
				fmt.Fprintf(tw, "  status: %s %s\n", dashOr(d.Status, "pending"), d.Message)
				for _, p := range d.Target.Apps {
					fmt.Fprintf(tw, "  app\t%s\t%s\t%s\n", p.Name, p.Version, p.Manifest)
				}
				if d.Target.OS != nil {
					fmt.Fprintf(tw, "  os\t%s\t%s\t%s\n", d.Target.OS.Name, d.Target.OS.Version, d.Target.OS.Manifest)
				}
				fmt.Fprintln(tw, "  RECEIVED\tKIND\tDOCUMENT\tSTATE\tMESSAGE")
				for _, e := range out.Events {
					fmt.Fprintf(tw, "  %s\t%s\tv%d\t%s\t%s\n", e.At.Local().Format("15:04:05"), e.Event.Kind, e.Event.DesiredVersion,
						dashOr(e.Event.State, "-"), oneLine(e.Event.Message))
				}
			})
		},
	}
	cmd.AddCommand(create, ls, show, assign, desired)
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func writePackages(tw *tabwriter.Writer, pkgs []store.Package) {
	fmt.Fprintln(tw, "  KIND\tNAME\tVERSION\tSIZE\tMANIFEST")
	for _, p := range pkgs {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", p.Kind, p.Name, p.Version, bytesText(p.Size), p.Digest)
	}
}

// uploadRelease streams the packages to the server in one multipart request,
// showing the upload's progress on a terminal.
func uploadRelease(cmd *cobra.Command, name string, paths []string) (*store.Release, error) {
	c, err := fleetClient()
	if err != nil {
		return nil, err
	}
	var total int64
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a file", p)
		}
		total += fi.Size()
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		pw.CloseWithError(writeReleaseBody(mw, name, paths))
	}()
	var body io.Reader = pr
	if f, ok := cmd.ErrOrStderr().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar := progressbar.NewOptions64(total, progressbar.OptionSetWriter(f), progressbar.OptionShowBytes(true),
			progressbar.OptionSetDescription("upload "+name), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish())
		defer bar.Finish()
		body = io.TeeReader(pr, bar)
	}
	// An upload takes as long as it takes; Ctrl-C stops it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var rel store.Release
	err = c.Upload(ctx, "/api/v1/releases", mw.FormDataContentType(), body, &rel)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return nil, err
	}
	return &rel, nil
}

func writeReleaseBody(mw *multipart.Writer, name string, paths []string) error {
	if err := mw.WriteField("name", name); err != nil {
		return err
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		w, err := mw.CreateFormFile("package", filepath.Base(p))
		if err == nil {
			_, err = io.Copy(w, f)
		}
		f.Close()
		if err != nil {
			return err
		}
	}
	return mw.Close()
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// fleetReleaseKeysCmd registers the release public keys the server verifies
// uploads with, and that devices receive as trust roots when they enroll.
func fleetReleaseKeysCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "release-keys", Aliases: []string{"release-key"}, Short: "Release public keys of the account (verify uploads; pinned by devices at enrollment)"}
	var asJSON bool
	var name string
	add := &cobra.Command{
		Use: "add KEY.pub [--name NAME]", Short: "Register a release public key (as written by tern keys generate)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pub, err := trust.LoadPublicKey(args[0])
			if err != nil {
				return err
			}
			if name == "" {
				name = strings.TrimSuffix(filepath.Base(args[0]), filepath.Ext(args[0]))
			}
			var k store.ReleaseKey
			if err := call("POST", "/api/v1/release-keys", map[string]any{"name": name, "public_key": string(trust.MarshalPublicKey(pub))}, &k); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, k, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "release key %s (%s) registered\n", trust.ShortID(k.KeyID), k.Name)
			})
		},
	}
	add.Flags().StringVar(&name, "name", "", "a name for the key (default: the file's base name)")
	ls := &cobra.Command{
		Use: "ls", Short: "List release keys", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ks []store.ReleaseKey
			if err := call("GET", "/api/v1/release-keys", nil, &ks); err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), asJSON, ks, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "KEY\tNAME\tADDED")
				for _, k := range ks {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", k.KeyID, k.Name, ago(k.CreatedAt))
				}
			})
		},
	}
	rm := &cobra.Command{
		Use: "rm KEY-ID", Short: "Remove a release key (devices enrolled before keep it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call("DELETE", "/api/v1/release-keys/"+url.PathEscape(args[0]), nil, nil)
		},
	}
	cmd.AddCommand(add, ls, rm)
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
