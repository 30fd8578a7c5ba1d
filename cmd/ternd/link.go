package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/link"
)

// version is ternd's version, set at build time with -ldflags "-X main.version=...".
var version = "dev"

// linkFlags are the flags that connect ternd to a management server.
type linkFlags struct {
	server, token string
}

// registerLinkFlags adds --server and --enroll-token to the command line.
func registerLinkFlags() *linkFlags {
	f := &linkFlags{}
	flag.StringVar(&f.server, "server", "", "management server URL (https://host:8443), used with --enroll-token")
	flag.StringVar(&f.token, "enroll-token", "", "enrollment token from `tern fleet tokens create`")
	return f
}

// start enrolls the device if asked to (or reuses the identity under DATA/identity)
// and keeps its link to the server up in the background until ctx ends. Without
// flags or an identity, ternd runs unmanaged.
func (f *linkFlags) start(ctx context.Context, a *agent.Agent, dataDir string, log *slog.Logger) {
	dir := filepath.Join(dataDir, "identity")
	if f.token == "" {
		if _, err := link.LoadIdentity(dir); errors.Is(err, link.ErrNotEnrolled) {
			return
		}
	}
	if f.token != "" && f.server == "" {
		log.Error("--enroll-token needs --server")
		return
	}
	go func() {
		id, err := enrollWithRetry(ctx, f.server, f.token, dir, log)
		if err != nil {
			log.Error("enrollment failed; running unmanaged", "err", err)
			return
		}
		log.Info("device identity", "device", id.DeviceID, "broker", id.MQTTURL)
		c := link.NewClient(link.ClientConfig{Identity: id, Logger: log, Report: reporter(a)})
		if err := c.Run(ctx); err != nil {
			log.Error("server link", "err", err)
		}
	}()
}

// enrollWithRetry retries what may pass (the network, the server being down) and
// gives up on what will not (a refused, malformed or mismatched token).
func enrollWithRetry(ctx context.Context, server, token, dir string, log *slog.Logger) (*link.Identity, error) {
	delay := time.Second
	for {
		id, err := link.Enroll(ctx, server, token, dir, log)
		if err == nil || errors.Is(err, link.ErrEnrollRefused) || errors.Is(err, link.ErrBadToken) ||
			errors.Is(err, link.ErrServerNotPinned) || ctx.Err() != nil {
			return id, err
		}
		log.Warn("enrollment: retrying", "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Minute)
	}
}

// reporter builds the reported state from the agent's apps.
func reporter(a *agent.Agent) link.ReportFunc {
	host, _ := os.Hostname()
	osName := osRelease()
	return func(ctx context.Context) (link.Reported, error) {
		apps, err := a.List(ctx)
		if err != nil {
			return link.Reported{}, err
		}
		// Timestamps that move on their own would make every report a change.
		for i := range apps {
			apps[i].NextStart = time.Time{}
		}
		data, err := json.Marshal(apps)
		if err != nil {
			return link.Reported{}, err
		}
		return link.Reported{AgentVersion: version, OS: osName, Arch: runtime.GOARCH, Hostname: host, Apps: data}, nil
	}
}

// osRelease returns PRETTY_NAME from /etc/os-release, or GOOS.
func osRelease() string {
	data, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return runtime.GOOS
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return runtime.GOOS
}
