// Command fleetsim simulates a fleet of Tern devices against a real tern server
// and measures the server: enrollment rate, the connect storm, CPU and memory per
// connected device, the latency from a device's event to the server's event
// stream, and a phased campaign to every device (docs/fleetsim.md).
//
//	fleetsim -n 200 -quick                  # under a minute: starts its own server (SQLite)
//	fleetsim -n 10000 -db postgres          # a throwaway PostgreSQL cluster
//	fleetsim -n 1000 -server https://host:8443 -admin ternk.... [-server-pid PID]
//
// With -token it only runs devices (enrolled with the token, state under -dir)
// against a server until interrupted, as before:
//
//	fleetsim -server https://localhost:8443 -token tern1.... -devices 20 -dir /tmp/fleet -fail-release v2
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tern-iot/tern/bench/fleetsim"
	"github.com/tern-iot/tern/bench/fleetsim/harness"
	"github.com/tern-iot/tern/internal/link"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-worker" {
		if err := harness.Worker(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "fleetsim worker:", err)
			os.Exit(1)
		}
		return
	}
	var o harness.Options
	var (
		n, perProc, probes, pkgSize, keepAlive             int
		quick, noCampaign, closeIdle, keep                 bool
		phases, jsonOut, serverURL, token, admin, fp, tern string
		dir, failRelease                                   string
		failShare                                          float64
		chunk                                              int64
		verbose                                            bool
	)
	flag.IntVar(&n, "n", 0, "devices (default 200; with -token: 10)")
	flag.IntVar(&n, "devices", 0, "same as -n")
	flag.BoolVar(&quick, "quick", false, "a run of under a minute: short idle window, fewer probes, small package")
	flag.StringVar(&o.DB, "db", "sqlite", "sqlite, postgres (a throwaway cluster) or a postgres:// URL of an empty database")
	flag.StringVar(&tern, "tern", "", "tern binary for the server (default: built from this module, or tern next to fleetsim or on PATH)")
	flag.StringVar(&serverURL, "server", "", "use this running server (https://host:port) instead of starting one")
	flag.StringVar(&admin, "admin", "", "admin API key of -server")
	flag.StringVar(&fp, "ca-fingerprint", "", "server CA fingerprint of -server (default: trust on first use)")
	flag.IntVar(&o.ServerPID, "server-pid", 0, "process id of -server (on this machine), for its CPU and memory")
	flag.Var((*argList)(&o.ServerArgs), "server-arg", "extra `tern server` argument (repeatable)")
	flag.IntVar(&o.Brokers, "brokers", 0, "put this many Mosquitto brokers, bridged to a central one the server uses (--broker), between the devices and the server (0: the server's embedded broker)")
	flag.StringVar(&dir, "dir", "", "working directory (default: a new temporary one, removed at the end unless -keep)")
	flag.BoolVar(&keep, "keep", false, "keep the working directory (server data and log, devices, worker logs)")
	flag.IntVar(&perProc, "per-proc", 8000, "most devices per worker process (a process holds < 20,000 descriptors here)")
	flag.IntVar(&o.EnrollConcurrency, "enroll-concurrency", 32, "enrollment requests in flight")
	flag.Float64Var(&o.ConnectRate, "connect-rate", 0, "devices connecting per second (0: all at once)")
	flag.IntVar(&keepAlive, "keepalive", 30, "MQTT keepalive of the devices, seconds")
	flag.DurationVar(&o.ReportEvery, "report-every", 0, "how often a device looks at its reported state (default 10s, ternd's; quick: 1s)")
	flag.DurationVar(&o.Heartbeat, "heartbeat", 0, "each device changes its reported state this often, from the second idle window on (default 5m; quick: 20s; -1s: never)")
	flag.DurationVar(&o.IdleWindow, "idle", 0, "each of the two windows idle CPU is measured over, without and with heartbeats (default 20s; quick: 4s)")
	flag.IntVar(&probes, "probes", 0, "reported-state changes timed to the event stream (default 200; quick: 50)")
	flag.BoolVar(&noCampaign, "no-campaign", false, "skip the campaign")
	flag.StringVar(&phases, "phases", "10%,50%,100%", "campaign phases")
	flag.IntVar(&pkgSize, "package-size", 0, "bytes of incompressible data in the package (default 65536; quick: 16384)")
	flag.DurationVar(&o.DownloadTime, "download", 0, "time added to each device's download (default 1s; quick: 200ms; -1s: none)")
	flag.Float64Var(&o.FailRate, "fail", 0, "share of devices (0..1) on which the update fails and rolls back")
	flag.StringVar(&o.Success, "success", "", "phase success threshold (default 100%, lower with -fail)")
	flag.StringVar(&o.MaxFailures, "max-failures", "", "campaign failure threshold (default 0, higher with -fail)")
	flag.BoolVar(&closeIdle, "close-idle", true, "devices close their HTTPS connections after a download, as ternd does (false: leave them to the server's idle timeout)")
	flag.DurationVar(&o.Timeout, "timeout", 0, "bound on the whole run (default 20m; quick: 2m)")
	flag.StringVar(&jsonOut, "json", "", "also write the report as JSON to this file")
	// The device-only mode.
	flag.StringVar(&token, "token", "", "enrollment token: only run devices against -server until interrupted")
	flag.StringVar(&failRelease, "fail-release", "", "with -token: updates to this release fail on the devices")
	flag.Float64Var(&failShare, "fail-share", 1, "with -token: share of the devices on which -fail-release fails")
	flag.Int64Var(&chunk, "chunk", 0, "with -token: fetch blobs in Range requests of this many bytes")
	flag.BoolVar(&verbose, "v", false, "with -token: log each device's connection and documents")
	flag.Parse()

	if token != "" {
		if n == 0 {
			n = 10
		}
		runDevices(serverURL, token, n, dir, failRelease, failShare, chunk, verbose)
		return
	}

	o.Devices, o.PerProc, o.Probes, o.PackageSize, o.KeepAlive = n, perProc, probes, pkgSize, uint16(keepAlive)
	o.NoCampaign, o.CloseIdle, o.Keep, o.Dir = noCampaign, closeIdle, keep, dir
	o.ServerURL, o.AdminKey, o.CAFingerprint = serverURL, admin, fp
	for _, p := range strings.Split(phases, ",") {
		if p = strings.TrimSpace(p); p != "" {
			o.Phases = append(o.Phases, p)
		}
	}
	if quick {
		set := func(d *time.Duration, v time.Duration) {
			if *d == 0 {
				*d = v
			}
		}
		if o.Devices == 0 {
			o.Devices = 200
		}
		set(&o.IdleWindow, 4*time.Second)
		set(&o.Heartbeat, 20*time.Second)
		set(&o.Settle, time.Second)
		set(&o.ReportEvery, time.Second)
		set(&o.DownloadTime, 200*time.Millisecond)
		set(&o.Timeout, 2*time.Minute)
		if o.Probes == 0 {
			o.Probes = 50
		}
		if o.PackageSize == 0 {
			o.PackageSize = 16 << 10
		}
	}
	if serverURL != "" && o.Brokers > 0 {
		fatal(fmt.Errorf("-brokers starts the server itself: not with -server"))
	}
	if serverURL != "" && admin == "" {
		fatal(fmt.Errorf("-server needs -admin"))
	}
	exe, err := os.Executable()
	if err != nil {
		fatal(err)
	}
	o.WorkerExe = []string{exe, "-worker"}
	o.Progress = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if serverURL == "" {
		built := false
		if o.Tern, built, err = ternBinary(ctx, tern); err != nil {
			fatal(err)
		}
		if built {
			defer os.Remove(o.Tern)
		}
	}
	rep, err := harness.Run(ctx, o)
	rep.Command = "fleetsim " + strings.Join(os.Args[1:], " ")
	fmt.Print(rep.Table())
	if jsonOut != "" {
		data, _ := json.MarshalIndent(rep, "", "  ")
		if werr := os.WriteFile(jsonOut, append(data, '\n'), 0o644); werr != nil {
			fmt.Fprintln(os.Stderr, "fleetsim:", werr)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetsim:", err)
		if o.Tern != "" && tern == "" {
			os.Remove(o.Tern)
		}
		os.Exit(1)
	}
}

// argList is a repeatable string flag.
type argList []string

func (a *argList) String() string     { return strings.Join(*a, " ") }
func (a *argList) Set(v string) error { *a = append(*a, v); return nil }

// ternBinary finds the tern binary for the server: the one named, else one built
// now from the module this runs in (so the server measured is the checkout's),
// else tern next to this program or on PATH.
func ternBinary(ctx context.Context, named string) (path string, built bool, err error) {
	if named != "" {
		return named, false, nil
	}
	if root := moduleRoot(); root != "" {
		if goBin, err := exec.LookPath("go"); err == nil {
			out := filepath.Join(os.TempDir(), fmt.Sprintf("fleetsim-tern-%d", os.Getpid()))
			cmd := exec.CommandContext(ctx, goBin, "build", "-o", out, "./cmd/tern")
			cmd.Dir, cmd.Stderr = root, os.Stderr
			fmt.Fprintln(os.Stderr, "fleetsim: building tern from", root)
			if err := cmd.Run(); err != nil {
				return "", false, fmt.Errorf("go build ./cmd/tern: %w", err)
			}
			return out, true, nil
		}
	}
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "tern"); isFile(p) {
			return p, false, nil
		}
	}
	if p, err := exec.LookPath("tern"); err == nil {
		return p, false, nil
	}
	return "", false, fmt.Errorf("no tern binary: pass -tern")
}

// moduleRoot is the directory of this module's go.mod above the working
// directory, or "".
func moduleRoot() string {
	d, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil {
			if strings.Contains(string(data), "module github.com/tern-iot/tern\n") {
				return d
			}
			return ""
		}
		parent := filepath.Dir(d)
		if parent == d {
			return ""
		}
		d = parent
	}
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// runDevices enrolls n devices with token (or reuses their identities under dir)
// and runs them until interrupted.
func runDevices(serverURL, token string, n int, dir, failRelease string, failShare float64, chunk int64, verbose bool) {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if dir == "" {
		d, err := os.MkdirTemp("", "fleetsim-")
		if err != nil {
			fatal(err)
		}
		dir = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	failing := int(float64(n) * failShare)
	for i := range n {
		cfg := fleetsim.Config{Dir: filepath.Join(dir, fmt.Sprintf("dev%04d", i)), ServerURL: serverURL, Token: strings.TrimSpace(token),
			Chunk: chunk, ReportEvery: 2 * time.Second, Logger: log}
		if failRelease != "" && i < failing {
			cfg.Fail = func(d *link.Desired) string {
				if d.Release == failRelease {
					return "simulated failure: health check failed"
				}
				return ""
			}
		}
		ectx, cancel := context.WithTimeout(ctx, time.Minute)
		d, err := fleetsim.New(ectx, cfg)
		cancel()
		if err != nil {
			fatal(fmt.Errorf("device %d: %w", i, err))
		}
		fmt.Println(d.ID())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("device stopped", "device", d.ID(), "err", err)
			}
		}()
	}
	fmt.Fprintf(os.Stderr, "fleetsim: %d device(s) running (state in %s); Ctrl-C stops them\n", n, dir)
	wg.Wait()
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "fleetsim:", err)
	os.Exit(1)
}
