package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/devmode"
	"github.com/tern-iot/tern/internal/discovery"
)

// addDevCommands adds developer mode's verbs to `tern device`: dev (on the
// device), pair, discover, select, push and exec (on a workstation), and makes
// every verb use the selected device when --device is not given.
func addDevCommands(cmd *cobra.Command, device *string) {
	cmd.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		if f := c.Flag("device"); (f != nil && f.Changed) || isDevGroup(c) {
			return nil // dev verbs go to the local socket unless told otherwise
		}
		if env := os.Getenv("TERN_DEVICE"); env != "" {
			*device = env
			return nil
		}
		if dir, err := devmode.ConfigDir(); err == nil {
			if sel, err := devmode.SelectedDevice(dir); err == nil && sel != "" {
				*device = sel
			}
		}
		return nil
	}
	client := func() (*agent.Client, error) { return agent.NewClient(*device) }
	cmd.AddCommand(devGroupCmd(client), pairCmd(), discoverCmd(), selectCmd(), pushCmd(client), execCmd(client))
}

func isDevGroup(c *cobra.Command) bool {
	for ; c != nil; c = c.Parent() {
		if c.Name() == "dev" && c.Parent() != nil && c.Parent().Name() == "device" {
			return true
		}
	}
	return false
}

func devGroupCmd(client func() (*agent.Client, error)) *cobra.Command {
	g := &cobra.Command{Use: "dev", Short: "Developer mode on this device (root, local socket only)"}
	var asJSON bool
	show := func(cmd *cobra.Command, st agent.DevStatus) error {
		if asJSON {
			return printJSONTo(cmd.OutOrStdout(), st)
		}
		w := cmd.OutOrStdout()
		mode := "off"
		if st.Enabled {
			mode = "on"
		}
		fmt.Fprintf(w, "developer mode: %s", mode)
		if !st.Since.IsZero() {
			fmt.Fprintf(w, " (since %s)", st.Since.Local().Format(time.RFC3339))
		}
		fmt.Fprintln(w)
		if st.Denied {
			fmt.Fprintln(w, "policy: refused by the account (tern fleet policy devmode on the server)")
		}
		fmt.Fprintf(w, "LAN API: %s\n", dashOr(st.LAN, "closed"))
		if st.Fingerprint != "" {
			fmt.Fprintf(w, "certificate: %s\n", st.Fingerprint)
		}
		if !st.CodeExpires.IsZero() {
			fmt.Fprintf(w, "pairing code active until %s\n", st.CodeExpires.Local().Format(time.TimeOnly))
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PAIRED\tWORKSTATION\tDEVELOPER KEY\tSINCE")
		for _, p := range st.Pairings {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.ID, p.Name, devmode.ShortID(p.KeyID), p.PairedAt.Local().Format(time.DateTime))
		}
		return tw.Flush()
	}
	run := func(fn func(*agent.Client, context.Context) (agent.DevStatus, error)) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			st, err := fn(c, cmd.Context())
			if err != nil {
				return err
			}
			return show(cmd, st)
		}
	}
	enable := &cobra.Command{Use: "enable", Short: "Open the LAN API to paired workstations and trust their developer keys", Args: cobra.NoArgs,
		RunE: run((*agent.Client).DevEnable)}
	disable := &cobra.Command{Use: "disable", Short: "Close the LAN API and stop trusting developer keys, at once", Args: cobra.NoArgs,
		RunE: run((*agent.Client).DevDisable)}
	status := &cobra.Command{Use: "status", Short: "Show developer mode, the LAN API and paired workstations", Args: cobra.NoArgs,
		RunE: run((*agent.Client).DevStatus)}
	status.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	pair := &cobra.Command{
		Use: "pair", Short: "Show a one-time code for `tern device pair` on a workstation", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			code, err := c.DevPairingCode(cmd.Context())
			if err != nil {
				return err
			}
			st, _ := c.DevStatus(cmd.Context())
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "pairing code: %s (valid until %s, once)\n", code.Code, code.Expires.Local().Format(time.TimeOnly))
			fmt.Fprintf(w, "on the workstation: tern device pair HOST --code %s\n", code.Code)
			if st.Fingerprint != "" {
				fmt.Fprintf(w, "this device's certificate: %s\n", devmode.ShortID(st.Fingerprint))
			}
			return nil
		},
	}
	unpair := &cobra.Command{
		Use: "unpair ID|all", Short: "Forget a paired workstation: its certificate and developer key", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			gone, err := c.DevUnpair(cmd.Context(), args[0])
			for _, p := range gone {
				fmt.Fprintf(cmd.OutOrStdout(), "unpaired %s (%s)\n", p.Name, p.ID)
			}
			return err
		},
	}
	g.AddCommand(enable, disable, status, pair, unpair)
	return g
}

func pairCmd() *cobra.Command {
	var code string
	c := &cobra.Command{
		Use: "pair HOST[:PORT] --code CODE", Short: "Pair this workstation with a device in developer mode", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := devmode.ConfigDir()
			if err != nil {
				return err
			}
			ws, err := devmode.OpenWorkstation(dir)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			kd, err := ws.Pair(ctx, args[0], code)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "paired with %s (%s) at %s; pinned certificate %s\n", kd.Name, kd.ID, kd.Address, devmode.ShortID(kd.Fingerprint))
			fmt.Fprintf(w, "developer key: %s (sign with: tern app build --key %s)\n", filepath.Join(ws.Dir, "developer.key"), filepath.Join(ws.Dir, "developer.key"))
			return nil
		},
	}
	c.Flags().StringVar(&code, "code", "", "the code `tern device dev pair` shows on the device")
	c.MarkFlagRequired("code")
	return c
}

func discoverCmd() *cobra.Command {
	var timeout time.Duration
	var asJSON bool
	c := &cobra.Command{
		Use: "discover [--timeout 2s] [--json]", Short: "List devices in developer mode on the LAN (mDNS)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			found, err := discovery.Browse(cmd.Context(), log, timeout)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSONTo(cmd.OutOrStdout(), found)
			}
			paired := map[string]bool{}
			if dir, err := devmode.ConfigDir(); err == nil {
				if ws, err := devmode.LoadWorkstation(dir); err == nil {
					list, _ := ws.Devices()
					for _, d := range list {
						paired[d.Fingerprint] = true
					}
				}
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tID\tADDRESS\tMODEL\tOS\tTERND\tAPPS\tPAIRED")
			for _, d := range found {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%t\n", d.Name, d.ID, d.Address, dash(d.Model), dash(d.OS), dash(d.Ternd),
					dash(d.Apps), paired[d.Fingerprint])
			}
			return tw.Flush()
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "how long to listen for answers")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func selectCmd() *cobra.Command {
	return &cobra.Command{
		Use: "select HOST[:PORT]", Short: "Make a device the default of every `tern device` verb", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := devmode.ConfigDir()
			if err != nil {
				return err
			}
			addr := args[0]
			if !strings.HasPrefix(addr, "unix://") {
				if addr, err = devmode.NormalizeAddr(addr); err != nil {
					return err
				}
				ws, err := devmode.LoadWorkstation(dir)
				if err == nil {
					_, err = ws.Known(addr)
				}
				if err != nil {
					return err
				}
			}
			if err := devmode.SelectDevice(dir, addr); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "default device: %s\n", addr)
			return nil
		},
	}
}

func pushCmd(client func() (*agent.Client, error)) *cobra.Command {
	var wait bool
	var waitTimeout time.Duration
	c := &cobra.Command{
		Use: "push APP.tern", Short: "Install an app on the device, with progress, and wait until it answers", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			c, err := client()
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			bars := newPushBars(fi.Size(), filepath.Base(args[0]))
			list, err := c.Install(cmd.Context(), bars.reader(f))
			bars.finish()
			if err != nil {
				return fmt.Errorf("push %s: %w", args[0], err)
			}
			w := cmd.OutOrStdout()
			for _, st := range list {
				fmt.Fprintf(w, "installed %s %s: %s (%.1fs)\n", st.Name, st.Version, stateText(st), time.Since(start).Seconds())
			}
			if !wait {
				return nil
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), waitTimeout)
			defer cancel()
			for _, st := range list {
				st, err := c.WaitReady(ctx, st.Name)
				if err != nil {
					return err
				}
				what := "running"
				if st.Health != "" {
					what = st.Health
				}
				fmt.Fprintf(w, "%s %s %s %.1fs after push\n", st.Name, st.Version, what, time.Since(start).Seconds())
			}
			return nil
		},
	}
	c.Flags().BoolVar(&wait, "wait", true, "wait until the app runs and passes its health check")
	c.Flags().DurationVar(&waitTimeout, "wait-timeout", time.Minute, "how long to wait")
	return c
}

// pushBars shows an upload bar while the package streams (ternd verifies and
// stores it as it arrives), then a spinner while ternd unpacks and starts it.
// Nothing is drawn when stderr is not a terminal.
type pushBars struct {
	upload, install *progressbar.ProgressBar
	stop            chan struct{}
	done            chan struct{}
}

func newPushBars(size int64, name string) *pushBars {
	b := &pushBars{stop: make(chan struct{}), done: make(chan struct{})}
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		close(b.done)
		return b
	}
	b.upload = progressbar.NewOptions64(size, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionShowBytes(true),
		progressbar.OptionSetDescription("upload  "+name), progressbar.OptionSetWidth(30), progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionShowCount(), progressbar.OptionOnCompletion(func() { fmt.Fprintln(os.Stderr) }))
	b.install = progressbar.NewOptions64(-1, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetDescription("install "+name),
		progressbar.OptionSpinnerType(14), progressbar.OptionSetElapsedTime(true), progressbar.OptionClearOnFinish())
	return b
}

// reader counts the upload; at its end the install spinner starts.
func (b *pushBars) reader(r io.Reader) io.Reader {
	if b.upload == nil {
		return r
	}
	return readerFunc(func(p []byte) (int, error) {
		n, err := r.Read(p)
		b.upload.Add(n)
		if err == io.EOF {
			b.upload.Finish()
			go b.spin()
		}
		return n, err
	})
}

func (b *pushBars) spin() {
	defer close(b.done)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			b.install.Finish()
			return
		case <-t.C:
			b.install.Add(1)
		}
	}
}

func (b *pushBars) finish() {
	if b.upload == nil {
		return
	}
	close(b.stop)
	select {
	case <-b.done:
	case <-time.After(time.Second): // the upload never ended (refused early)
		b.upload.Exit()
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func execCmd(client func() (*agent.Client, error)) *cobra.Command {
	var tty, noTTY bool
	c := &cobra.Command{
		Use:   "exec NAME -- CMD [ARG...]",
		Short: "Run a command in an app's container (a terminal when attached to one)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			in, out := int(os.Stdin.Fd()), int(os.Stdout.Fd())
			useTTY := (tty || (term.IsTerminal(in) && term.IsTerminal(out))) && !noTTY
			argv := args[1:]
			if argv[0] == "--" { // flags stop at NAME, so the separator comes through
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return fmt.Errorf("exec %s: no command", args[0])
			}
			req := agent.ExecRequest{Cmd: argv, TTY: useTTY}
			eio := agent.ExecIO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
			if useTTY {
				req.Env = append(req.Env, "TERM="+dashOr(os.Getenv("TERM"), "xterm"))
				if cols, rows, err := term.GetSize(out); err == nil {
					req.Cols, req.Rows = uint16(cols), uint16(rows)
				}
				if term.IsTerminal(in) {
					old, err := term.MakeRaw(in)
					if err == nil {
						defer term.Restore(in, old)
					}
				}
				resize := make(chan [2]uint16, 1)
				winch := make(chan os.Signal, 1)
				signal.Notify(winch, syscall.SIGWINCH)
				defer signal.Stop(winch)
				go func() {
					for range winch {
						if cols, rows, err := term.GetSize(out); err == nil {
							resize <- [2]uint16{uint16(cols), uint16(rows)}
						}
					}
				}()
				eio.Resize = resize
			}
			code, err := c.Exec(cmd.Context(), args[0], req, eio)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code, err: fmt.Errorf("%s exited with code %d", argv[0], code)}
			}
			return nil
		},
	}
	c.Flags().SetInterspersed(false)
	c.Flags().BoolVarP(&tty, "tty", "t", false, "run on a terminal even when not attached to one")
	c.Flags().BoolVarP(&noTTY, "no-tty", "T", false, "never run on a terminal")
	return c
}

func printJSONTo(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dashOr(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}
