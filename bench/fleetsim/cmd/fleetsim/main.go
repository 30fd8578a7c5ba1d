// Command fleetsim runs simulated Tern devices against a tern server: each one
// enrolls with the token (or reuses its identity under --dir), stays connected
// over MQTT with mutual TLS, applies desired state (downloads included) and
// reports. It runs until interrupted.
//
//	fleetsim --server https://localhost:8443 --token tern1.... --devices 20 --dir /tmp/fleet --fail-release v2
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tern-iot/tern/bench/fleetsim"
	"github.com/tern-iot/tern/internal/link"
)

func main() {
	serverURL := flag.String("server", "", "server URL (https://host:port), for enrollment")
	token := flag.String("token", "", "enrollment token (tern1....)")
	n := flag.Int("devices", 10, "how many devices")
	dir := flag.String("dir", "", "state directory (default: a new temporary one)")
	failRelease := flag.String("fail-release", "", "updates to this release fail on the devices (they roll back)")
	failShare := flag.Float64("fail-share", 1, "share of the devices on which --fail-release fails (0..1)")
	chunk := flag.Int64("chunk", 0, "fetch blobs in Range requests of this many bytes")
	verbose := flag.Bool("v", false, "log each device's connection and documents")
	flag.Parse()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *dir == "" {
		d, err := os.MkdirTemp("", "fleetsim-")
		if err != nil {
			fatal(err)
		}
		*dir = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	failing := int(float64(*n) * *failShare)
	for i := range *n {
		cfg := fleetsim.Config{Dir: filepath.Join(*dir, fmt.Sprintf("dev%04d", i)), ServerURL: *serverURL, Token: strings.TrimSpace(*token),
			Chunk: *chunk, ReportEvery: 2 * time.Second, Logger: log}
		if *failRelease != "" && i < failing {
			cfg.Fail = func(d *link.Desired) string {
				if d.Release == *failRelease {
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
	fmt.Fprintf(os.Stderr, "fleetsim: %d device(s) running (state in %s); Ctrl-C stops them\n", *n, *dir)
	wg.Wait()
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "fleetsim:", err)
	os.Exit(1)
}
