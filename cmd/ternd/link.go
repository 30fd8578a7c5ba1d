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
	"github.com/tern-iot/tern/internal/logship"
	"github.com/tern-iot/tern/internal/trust"
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

// managed reports whether ternd is or will be enrolled (a token, or an identity):
// then the account's release keys come from the server.
func (f *linkFlags) managed(dataDir string) bool {
	if f.token != "" {
		return true
	}
	_, err := link.LoadIdentity(filepath.Join(dataDir, "identity"))
	return err == nil
}

// start enrolls the device if asked to (or reuses the identity under DATA/identity)
// and keeps its link to the server up in the background until ctx ends. Without
// flags or an identity, ternd runs unmanaged.
func (f *linkFlags) start(ctx context.Context, a *agent.Agent, dataDir string, log *slog.Logger, ship *logship.Buffer) {
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
		if err := manage(a, id); err != nil {
			log.Error("server management off", "err", err)
		}
		cfg := link.ClientConfig{Identity: id, Logger: log, Report: reporter(a),
			OnDesired: a.OfferDesired, Events: events(a), EventsReady: a.EventsReady()}
		if ship != nil {
			cfg.Logs = ship
			go logship.NewTailer(filepath.Join(dataDir, "logs"), ship).Run(ctx, time.Second)
		}
		c := link.NewClient(cfg)
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

// manage trusts the account's release keys received at enrollment and lets the
// agent follow the server's desired state, signed by the director key.
func manage(a *agent.Agent, id *link.Identity) error {
	keys, err := trust.LoadPublicKeyDir(id.TrustDir())
	if err != nil {
		return err
	}
	var director *trust.PublicKey
	var release []trust.PublicKey
	for _, k := range keys {
		if k.ID == directorID(id) {
			director = &k
			continue
		}
		release = append(release, k)
	}
	a.AddTrustedKeys(release...)
	if director == nil {
		return errors.New("no director key in " + id.TrustDir())
	}
	tlsCfg, err := id.TLSConfig()
	if err != nil {
		return err
	}
	a.Manage(agent.Management{DeviceID: id.DeviceID, ServerURL: id.ServerURL, Director: *director, TLS: tlsCfg})
	return nil
}

// directorID is the key id of the director key received at enrollment.
func directorID(id *link.Identity) string {
	k, err := trust.LoadPublicKey(filepath.Join(id.TrustDir(), "director.pub"))
	if err != nil {
		return ""
	}
	return k.ID
}

// events turns the agent's events into the messages the server reads.
func events(a *agent.Agent) func(since uint64) ([]link.EventMessage, error) {
	return func(since uint64) ([]link.EventMessage, error) {
		evs, err := a.Events(since)
		if err != nil {
			return nil, err
		}
		out := make([]link.EventMessage, 0, len(evs))
		for _, e := range evs {
			out = append(out, link.EventMessage{Seq: e.Seq, Time: e.Time, Kind: e.Kind, App: e.App, Version: e.Version,
				Txn: e.Txn, From: e.From, To: e.To, Message: e.Message, State: e.State,
				DesiredVersion: e.DesiredVersion, Campaign: e.Campaign})
		}
		return out, nil
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
		desired, done := a.DesiredVersion()
		upd := map[string]any{"desired_version": desired, "desired_done": done}
		if st, err := a.OSStatus(ctx); err == nil {
			st.Bootloader = nil
			upd["os"] = st
		}
		// Developer mode is reported so the directory shows which devices are open
		// to paired workstations on their LAN.
		if dev, err := a.DevStatus(); err == nil {
			upd["devmode"] = map[string]any{"enabled": dev.Enabled, "since": dev.Since, "pairings": len(dev.Pairings), "denied": dev.Denied}
		}
		updJSON, _ := json.Marshal(upd)
		return link.Reported{AgentVersion: version, OS: osName, Arch: runtime.GOARCH, Hostname: host, Apps: data, Update: updJSON}, nil
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
