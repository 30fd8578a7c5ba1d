package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/klauspost/compress/zstd"
	"gopkg.in/yaml.v3"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/update"
)

// ErrNoOSUpdates reports a device whose ternd has no OS configuration.
var ErrNoOSUpdates = errors.New("OS updates are not configured on this device (ternd --os-config)")

// OSConfig is the device's OS update configuration (ternd --os-config FILE, YAML).
type OSConfig struct {
	// DeviceType must be among an OS package's device_types.
	DeviceType string `yaml:"device_type"`
	// Slots are the two root file system slots, "a" and "b": block devices or
	// image files.
	Slots map[string]string `yaml:"slots"`
	// Bootloader is the backend that holds the boot variables.
	Bootloader struct {
		Kind        string `yaml:"kind"`          // file | uboot | grub
		EnvFile     string `yaml:"env_file"`      // file: the env file; grub: the grubenv
		FwEnvConfig string `yaml:"fw_env_config"` // uboot: fw_env.config
		DefaultEnv  string `yaml:"default_env"`   // uboot: the board's default env, for a never-saved env
	} `yaml:"bootloader"`
	// RebootCommand reboots the device (default: systemctl reboot).
	RebootCommand []string `yaml:"reboot_command"`
	// Cmdline is where the booted slot is read (tern.slot=a|b); default /proc/cmdline.
	Cmdline string `yaml:"cmdline"`
	// FactoryVersion is the OS version of the slot the device first boots from.
	FactoryVersion string `yaml:"factory_version"`
	// Health is what a new OS must show after its first boot to be committed.
	Health struct {
		Timeout  app.Duration `yaml:"timeout"`   // default 5m
		BootApps *bool        `yaml:"boot_apps"` // every boot app running (and healthy); default true
		// MinUptime is how long each boot app must have run without a restart
		// (default 10s): a crash-looping app is "running" between its crashes.
		MinUptime app.Duration `yaml:"min_uptime"`
	} `yaml:"health"`
}

// LoadOSConfig reads and checks an OS configuration file.
func LoadOSConfig(path string) (*OSConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c OSConfig
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.DeviceType == "" || c.Slots["a"] == "" || c.Slots["b"] == "" || len(c.Slots) != 2 {
		return nil, fmt.Errorf("%s: want device_type and slots a and b", path)
	}
	if _, err := update.NewBootloader(c.bootloaderConfig()); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.FactoryVersion != "" {
		if _, err := app.ParseVersion(c.FactoryVersion); err != nil {
			return nil, fmt.Errorf("%s: factory_version: %w", path, err)
		}
	}
	if len(c.RebootCommand) == 0 {
		c.RebootCommand = []string{"systemctl", "reboot"}
	}
	if c.Cmdline == "" {
		c.Cmdline = "/proc/cmdline"
	}
	if c.Health.Timeout == 0 {
		c.Health.Timeout = app.Duration(5 * time.Minute)
	}
	if c.Health.MinUptime == 0 {
		c.Health.MinUptime = app.Duration(10 * time.Second)
	}
	return &c, nil
}

func (c *OSConfig) bootloaderConfig() update.BootloaderConfig {
	return update.BootloaderConfig{Kind: c.Bootloader.Kind, EnvFile: c.Bootloader.EnvFile,
		FwEnvConfig: c.Bootloader.FwEnvConfig, DefaultEnv: c.Bootloader.DefaultEnv}
}

// OSState is the OS as the device knows it, persisted in state.db.
//
// Invariant after a crash at any point: a slot's version is set only once its whole
// image was written, synced and verified, and cleared before a write to it starts;
// Committed names the slot whose OS was last committed.
type OSState struct {
	Slots     map[string]string `json:"slots"` // slot -> OS version it holds ("" = unknown or partial)
	Committed string            `json:"committed"`
}

// OSStatus is what `tern device os status` and the reported state show.
type OSStatus struct {
	DeviceType string            `json:"device_type"`
	Booted     string            `json:"booted_slot"`
	Version    string            `json:"version"`
	Committed  string            `json:"committed_slot"`
	Slots      map[string]string `json:"slots"`
	Update     string            `json:"update,omitempty"`
	Bootloader map[string]string `json:"bootloader,omitempty"`
}

// bootedSlot reads which slot this boot came from.
func (a *Agent) bootedSlot() (string, error) {
	data, err := os.ReadFile(a.cfg.OS.Cmdline)
	if err != nil {
		return "", err
	}
	return update.BootedSlot(string(data))
}

// osState loads the OS state, seeding it on first start from the factory version.
func (a *Agent) osState() (*OSState, string, error) {
	booted, err := a.bootedSlot()
	if err != nil {
		return nil, "", err
	}
	st, err := a.store.OS()
	if err != nil {
		return nil, "", err
	}
	if st == nil {
		st = &OSState{Slots: map[string]string{booted: a.cfg.OS.FactoryVersion}, Committed: booted}
		if err := a.store.SaveOS(st); err != nil {
			return nil, "", err
		}
	}
	return st, booted, nil
}

// OSStatus reports the OS: booted slot, versions, update in progress.
func (a *Agent) OSStatus(ctx context.Context) (OSStatus, error) {
	if a.cfg.OS == nil {
		return OSStatus{}, ErrNoOSUpdates
	}
	st, booted, err := a.osState()
	if err != nil {
		return OSStatus{}, err
	}
	out := OSStatus{DeviceType: a.cfg.OS.DeviceType, Booted: booted, Version: st.Slots[booted], Committed: st.Committed, Slots: st.Slots}
	if t, err := a.store.Txn(); err == nil && t != nil && t.Kind == update.KindOS {
		out.Update = fmt.Sprintf("%s %s->%s", t.State, t.Changes[0].From, t.Changes[0].To)
	}
	if bl, err := update.NewBootloader(a.cfg.OS.bootloaderConfig()); err == nil {
		out.Bootloader, _ = bl.Get(ctx)
	}
	return out, nil
}

// osChange is the Data of an OS transaction's change.
type osChange struct {
	Slot     string              `json:"slot"` // the slot the new OS was written to
	Manifest app.PackageManifest `json:"manifest"`
}

// InstallOS verifies an OS package and streams its image into the inactive slot
// (decompressing and hashing as it goes, with no temporary copy), then runs the
// update: the bootloader is told to try the slot once and the device reboots. After
// the reboot the update resumes (Boot) and commits if the device is healthy.
func (a *Agent) InstallOS(ctx context.Context, r io.Reader) (OSStatus, error) {
	if a.cfg.OS == nil {
		return OSStatus{}, ErrNoOSUpdates
	}
	a.mu.Lock()
	if t, err := a.store.Txn(); err != nil || t != nil {
		a.mu.Unlock()
		return OSStatus{}, errors.Join(err, ErrBusy)
	}
	st, booted, err := a.osState()
	if err != nil {
		a.mu.Unlock()
		return OSStatus{}, err
	}
	target := update.OtherSlot(booted)
	sink := &slotWriter{a: a, slot: target, path: a.cfg.OS.Slots[target]}
	p, err := app.Read(r, app.ReadOptions{Keys: a.trustedKeys(), Admit: func(pm *app.PackageManifest) error {
		if err := a.admitOS(pm, st); err != nil {
			return err
		}
		sink.want = pm.OS.Image
		// The slot is about to be overwritten: it no longer holds any version.
		st.Slots[target] = ""
		return a.store.SaveOS(st)
	}}, sink)
	if err != nil {
		a.mu.Unlock()
		return OSStatus{}, fmt.Errorf("install os: %w", err)
	}
	st.Slots[target] = p.Manifest.OS.Version
	if err := a.store.SaveOS(st); err != nil {
		a.mu.Unlock()
		return OSStatus{}, err
	}
	data, _ := json.Marshal(osChange{Slot: target, Manifest: *p.Manifest})
	t := &update.Txn{ID: newTxnID(), Kind: update.KindOS, Probation: a.cfg.OS.Health.Timeout.D(),
		Changes: []update.Change{{Name: "os", From: st.Slots[booted], To: p.Manifest.OS.Version, Data: data}}}
	// The update reboots the device: run it in the background and answer as soon
	// as the bootloader has been told and the reboot command has run (or the
	// transaction has ended, with its error if it failed).
	done := make(chan error, 1)
	issued := make(chan struct{})
	a.rebootIssued = issued
	go func() {
		defer a.mu.Unlock()
		err := a.runTxn(t, false)
		a.rebootIssued = nil
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return OSStatus{}, err
		}
	case <-issued:
	case <-time.After(rebootAnswerWait):
		// A reboot command that does not return (or keeps its output open):
		// answer anyway; the update goes on.
	case <-ctx.Done():
		return OSStatus{}, ctx.Err()
	}
	return a.OSStatus(ctx)
}

// admitOS is the device's policy for OS packages.
func (a *Agent) admitOS(pm *app.PackageManifest, st *OSState) error {
	if pm.Kind != app.KindOS {
		return fmt.Errorf("%w: this is an app package; use tern device install", ErrRefused)
	}
	o := pm.OS
	if !slices.Contains(o.DeviceTypes, a.cfg.OS.DeviceType) {
		return fmt.Errorf("%w: OS %s is for %v, this device is %s", ErrRefused, o.Version, o.DeviceTypes, a.cfg.OS.DeviceType)
	}
	if cur := st.Slots[st.Committed]; cur != "" {
		c, _ := app.ParseVersion(cur)
		n, _ := app.ParseVersion(o.Version)
		switch d := n.Compare(c); {
		case d == 0:
			return fmt.Errorf("%w: OS %s is already installed", ErrAlreadyInstalled, o.Version)
		case d < 0 && !o.AllowDowngrade:
			return fmt.Errorf("%w: OS %s is below the committed %s, and its signed manifest does not allow_downgrade", ErrDowngrade, o.Version, cur)
		}
	}
	if capacity, ok := slotCapacity(a.cfg.OS.Slots[update.OtherSlot(st.Committed)]); ok && o.Image.Size > capacity {
		return fmt.Errorf("%w: the OS image is %d bytes, the slot holds %d", ErrNoSpace, o.Image.Size, capacity)
	}
	return nil
}

// slotCapacity is a block device's size; an image file has none (it grows).
func slotCapacity(path string) (int64, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeDevice == 0 {
		return 0, false
	}
	n, err := f.Seek(0, io.SeekEnd)
	return n, err == nil
}

// slotWriter is the BlobSink of an OS package: it decompresses the payload into the
// slot while hashing the raw image, and fails unless both the payload (the package
// reader checks it at EOF) and the raw image match the signed manifest.
type slotWriter struct {
	a    *Agent
	slot string
	path string
	want app.ImageDigest
}

func (w *slotWriter) WriteBlob(d app.Descriptor, r io.Reader) error {
	flags := os.O_WRONLY
	if fi, err := os.Stat(w.path); err != nil || fi.Mode().IsRegular() {
		flags |= os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(w.path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("slot %s: %w", w.slot, err)
	}
	defer f.Close()
	zr, err := zstd.NewReader(r, zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	defer zr.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(&syncEvery{f: f, every: 16 << 20}, h), io.LimitReader(zr, w.want.Size+1))
	if err != nil {
		// A payload that does not decompress: if its bytes are not the signed ones,
		// the reader says so; else the signed payload itself is bad.
		if _, derr := io.Copy(io.Discard, r); derr != nil {
			return derr
		}
		return fmt.Errorf("%w: the signed OS payload does not decompress: %v", app.ErrBlobDigest, err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil { // the payload's own digest check
		return err
	}
	if n != w.want.Size || hexDigest(h) != w.want.Digest {
		return fmt.Errorf("%w: the OS image in the payload is not the one signed (%d bytes, %s)", app.ErrBlobDigest, n, hexDigest(h))
	}
	return f.Sync()
}

func hexDigest(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

// rebootAnswerWait bounds how long InstallOS waits for the reboot command to
// return before it answers its caller.
const rebootAnswerWait = 10 * time.Second

// reboot runs the configured reboot command, then waits to be killed by it. The
// command should return once the reboot is under way (as systemctl reboot does):
// InstallOS answers its caller then.
func (a *Agent) reboot(ctx context.Context) error {
	c := a.cfg.OS.RebootCommand
	a.log.Info("rebooting", "command", c)
	if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("reboot: %v: %s", err, out)
	}
	if ch := a.rebootIssued; ch != nil {
		a.rebootIssued = nil
		close(ch)
	}
	<-ctx.Done()
	return ctx.Err()
}

// osActions does the work of each update state for the OS.
type osActions struct{ a *Agent }

func (x osActions) change(t *update.Txn) (osChange, update.Bootloader, string, error) {
	var c osChange
	if err := json.Unmarshal(t.Changes[0].Data, &c); err != nil {
		return c, nil, "", err
	}
	bl, err := update.NewBootloader(x.a.cfg.OS.bootloaderConfig())
	if err != nil {
		return c, nil, "", err
	}
	booted, err := x.a.bootedSlot()
	return c, bl, booted, err
}

// Swap tells the bootloader to try the new slot once, and reboots.
func (x osActions) Swap(ctx context.Context, t *update.Txn) error {
	c, bl, booted, err := x.change(t)
	if err != nil {
		return err
	}
	if booted == c.Slot {
		return nil // already on it (resumed after the reboot)
	}
	if err := bl.Set(ctx, update.TrialVars(c.Slot)); err != nil {
		return fmt.Errorf("bootloader: %w", err)
	}
	return nil
}

// Watch, before the reboot, reboots into the new slot; after it, checks that this
// boot came from the new slot (else the bootloader fell back) and that the device is
// healthy within the window.
func (x osActions) Watch(ctx context.Context, t *update.Txn) error {
	c, _, booted, err := x.change(t)
	if err != nil {
		return err
	}
	if booted != c.Slot {
		env, _ := x.bootloaderEnv(ctx)
		if env[update.VarUpgrade] == "1" && env[update.VarSlot] == c.Slot {
			return x.a.reboot(ctx) // first pass: the trial boot is ahead
		}
		return fmt.Errorf("the bootloader fell back to slot %s: OS %s did not boot", booted, c.Manifest.OS.Version)
	}
	for {
		err := x.a.osHealthy()
		if err == nil {
			// Make the trial permanent before the machine records committed: a
			// power cut from here on boots the new slot, never falls back.
			bl, berr := update.NewBootloader(x.a.cfg.OS.bootloaderConfig())
			if berr != nil {
				return berr
			}
			return bl.Set(ctx, commitVars(c.Slot))
		}
		if !time.Now().Before(t.Until) {
			return fmt.Errorf("OS %s not healthy within %s: %w", c.Manifest.OS.Version, t.Probation, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (x osActions) bootloaderEnv(ctx context.Context) (map[string]string, error) {
	bl, err := update.NewBootloader(x.a.cfg.OS.bootloaderConfig())
	if err != nil {
		return nil, err
	}
	return bl.Get(ctx)
}

// osHealthy is the commit condition: every boot app runs (and is healthy if it has
// a health check).
func (a *Agent) osHealthy() error {
	if b := a.cfg.OS.Health.BootApps; b != nil && !*b {
		return nil
	}
	recs, err := a.store.Apps()
	if err != nil {
		return err
	}
	for _, r := range recs {
		if !r.Package.App.Boot || r.Desired != DesiredRunning {
			continue
		}
		st := a.status(r)
		if st.State != StateRunning || (r.Package.App.Health != nil && st.Health != HealthHealthy) {
			return fmt.Errorf("boot app %s is %s %s", r.Name(), st.State, st.Health)
		}
		if up := time.Since(st.StartedAt); up < a.cfg.OS.Health.MinUptime.D() {
			return fmt.Errorf("boot app %s has run only %s", r.Name(), up.Round(time.Millisecond))
		}
	}
	return nil
}

// Commit records the new slot as committed (Watch already ended the trial in the
// bootloader; setting it again keeps Commit idempotent).
func (x osActions) Commit(ctx context.Context, t *update.Txn) error {
	c, bl, booted, err := x.change(t)
	if err != nil {
		return err
	}
	if booted != c.Slot {
		return fmt.Errorf("commit on slot %s, but the new OS is in slot %s", booted, c.Slot)
	}
	if err := bl.Set(ctx, commitVars(c.Slot)); err != nil {
		return err
	}
	st, _, err := x.a.osState()
	if err != nil {
		return err
	}
	st.Committed = c.Slot
	return x.a.store.SaveOS(st)
}

// Rollback returns to the old slot: on it already (the bootloader fell back, or the
// reboot never happened), it clears the trial; on the new slot, it reboots and the
// bootloader's counter falls back.
func (x osActions) Rollback(ctx context.Context, t *update.Txn) error {
	c, bl, booted, err := x.change(t)
	if err != nil {
		return err
	}
	if booted == c.Slot {
		return x.a.reboot(ctx)
	}
	return bl.Set(ctx, commitVars(booted))
}

// commitVars make the bootloader boot slot for good: no trial in progress.
func commitVars(slot string) map[string]string {
	vars := update.CommitVars()
	vars[update.VarSlot] = slot
	return vars
}

// Discard forgets the failed image: its slot holds no version the device would boot.
func (x osActions) Discard(ctx context.Context, t *update.Txn) error {
	c, _, _, err := x.change(t)
	if err != nil {
		return err
	}
	st, _, err := x.a.osState()
	if err != nil {
		return err
	}
	st.Slots[c.Slot] = ""
	return x.a.store.SaveOS(st)
}

// syncEvery writes to f and flushes it to disk every so many bytes, so the kernel
// writes the slot back while the image streams in rather than all at the end (on a
// device with much memory, that final flush alone took longer than the rest).
type syncEvery struct {
	f       *os.File
	every   int64
	pending int64
}

func (s *syncEvery) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	s.pending += int64(n)
	if err == nil && s.pending >= s.every {
		s.pending = 0
		err = s.f.Sync()
	}
	return n, err
}
