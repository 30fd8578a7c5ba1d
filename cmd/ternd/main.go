// Command ternd is Tern's device agent: it runs each app in its own container under
// runc, supervises it, and serves the local API that `tern device` uses. This file
// only parses flags and wires internal/agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/logship"
	"github.com/tern-iot/tern/internal/trust"
	"github.com/tern-iot/tern/internal/update"
)

// shipBufferBytes bounds the logs a device keeps while its server is out of reach.
const shipBufferBytes = 8 << 20

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ternd:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg agent.Config
	var socket, trustDir, logLevel string
	flag.StringVar(&cfg.DataDir, "data", "/var/lib/tern", "state directory (state.db, blobs, layers, apps, volumes, logs)")
	flag.StringVar(&socket, "socket", agent.DefaultSocket, "local API socket (mode 0600)")
	flag.StringVar(&trustDir, "trust", "/etc/tern/trust", "directory of trusted release public keys (*.pub)")
	flag.StringVar(&cfg.RuncPath, "runtime", "runc", "OCI runtime binary")
	flag.StringVar(&cfg.RuncRoot, "runtime-root", "/run/tern/runc", "the runtime's state root (--root)")
	flag.StringVar(&cfg.MonitorPath, "monitor", "", "tern-monitor binary (default: beside ternd, then PATH)")
	flag.StringVar(&cfg.CgroupParent, "cgroup-parent", "/tern", "cgroup under which app containers are placed")
	flag.BoolVar(&cfg.AllowHostNetwork, "allow-host-network", false, "let apps that ask for it share the device's network")
	flag.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	var osConfig string
	flag.StringVar(&osConfig, "os-config", "", "OS update configuration (slots, bootloader); OS updates are off without it")
	var lanAddr string
	flag.StringVar(&lanAddr, "lan", ":7443", "LAN API address, served only in developer mode (mutual TLS)")
	var shipBytes int64
	flag.Int64Var(&shipBytes, "log-buffer", shipBufferBytes, "bytes of logs kept for the server while it is out of reach (the oldest are dropped, and counted, beyond)")
	var crashAt string
	flag.StringVar(&crashAt, "debug-crash-at", "", "FOR TESTS: kill ternd (SIGKILL) right after an update persists this state")
	lf := registerLinkFlags()
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return err
	}
	var handler slog.Handler = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})
	// A managed device ships its logs (the apps' and its own) to the server.
	var ship *logship.Buffer
	if lf.managed(cfg.DataDir) {
		var err error
		if ship, err = logship.Open(filepath.Join(cfg.DataDir, "logship"), shipBytes); err != nil {
			return err
		}
		defer ship.Close()
		handler = logship.Handler(handler, ship)
	}
	cfg.Logger = slog.New(handler)
	keys, err := trust.LoadPublicKeyDir(trustDir)
	if err != nil {
		return err
	}
	if len(keys) == 0 && !lf.managed(cfg.DataDir) {
		return fmt.Errorf("no trusted release keys (*.pub) in %s, and no enrollment to receive them from: ternd installs only signed packages", trustDir)
	}
	cfg.Keys = keys
	if osConfig != "" {
		if cfg.OS, err = agent.LoadOSConfig(osConfig); err != nil {
			return err
		}
	}
	if crashAt != "" {
		cfg.CrashAt = update.State(crashAt)
		cfg.Crash = func(update.State) { syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	}

	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	l, err := agent.ListenUnix(socket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	cfg.Logger.Info("ternd starting", "data", cfg.DataDir, "socket", socket, "trusted_keys", len(keys))
	if err := a.Boot(ctx); err != nil {
		return err
	}
	lf.start(ctx, a, cfg.DataDir, cfg.Logger, ship)
	if err := serveLAN(ctx, a, lanAddr); err != nil {
		return err
	}
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	cfg.Logger.Info("ternd stopping; app containers keep running")
	return nil
}
