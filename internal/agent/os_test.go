package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/trust"
	"github.com/tern-iot/tern/internal/update"
)

// osRig is a device with two image-file slots, the file bootloader backend and a
// reboot command that only leaves a mark: the test performs the reboot, applying
// the shipped boot script's rules (update.SimulateBoot) to the env file.
type osRig struct {
	e      *testEnv
	dir    string
	marker string
	bl     update.Bootloader
}

func newOSRig(t *testing.T) *osRig {
	e := newEnv(t)
	e.cleanup()
	dir := filepath.Join(e.dir, "os")
	os.MkdirAll(dir, 0o755)
	factory := randomImage(t, 1<<20)
	os.WriteFile(filepath.Join(dir, "slot-a.img"), factory, 0o600)
	os.WriteFile(filepath.Join(dir, "slot-b.img"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "cmdline"), []byte("console=ttyS0 tern.slot=a quiet\n"), 0o644)
	r := &osRig{e: e, dir: dir, marker: filepath.Join(dir, "reboot-requested")}
	c := &OSConfig{DeviceType: "test-board", Slots: map[string]string{"a": filepath.Join(dir, "slot-a.img"), "b": filepath.Join(dir, "slot-b.img")},
		RebootCommand: []string{"touch", r.marker}, Cmdline: filepath.Join(dir, "cmdline"), FactoryVersion: "1.0.0"}
	c.Bootloader.Kind, c.Bootloader.EnvFile = "file", filepath.Join(dir, "bootenv")
	c.Health.Timeout = app.Duration(6 * time.Second)
	c.Health.MinUptime = app.Duration(2 * time.Second)
	e.cfg.OS = c
	bl, err := update.NewBootloader(c.bootloaderConfig())
	if err != nil {
		t.Fatal(err)
	}
	bl.Set(context.Background(), map[string]string{update.VarSlot: "a", update.VarUpgrade: "0", update.VarBootCount: "0", update.VarBootLimit: "1"})
	r.bl = bl
	e.start()
	// A boot app, whose health is the OS commit condition. It fails when the test
	// drops a "broken" file in its volume: an OS on which the device's apps cannot run.
	e.install(pkg(t, e.key, busyboxRoot(t), `
name: sensor
version: 1.0.0
command: ["/bin/sh", "-c", "test ! -e /data/broken && while true; do sleep 1; done"]
boot: true
stop_timeout: 1s
volumes: [{name: data, path: /data, size: 1Mi}]
`))
	return r
}

func randomImage(t *testing.T, n int) []byte {
	b := make([]byte, n)
	rand.Read(b[:n/2]) // half noise, half zeros: compresses like a file system
	return b
}

func (r *osRig) osPkg(t *testing.T, key trust.PrivateKey, version string, image []byte, types ...string) []byte {
	t.Helper()
	img := filepath.Join(t.TempDir(), "rootfs.img")
	os.WriteFile(img, image, 0o644)
	if len(types) == 0 {
		types = []string{"test-board"}
	}
	var buf bytes.Buffer
	if _, err := app.BuildOS(context.Background(), app.OSBuildOptions{Image: img, Version: version, DeviceTypes: types, Keys: []trust.PrivateKey{key}, TempDir: t.TempDir()}, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// reboot waits for the device to ask for a reboot, then reboots it: ternd and every
// container die, the bootloader runs its script on the env, the kernel command line
// names the slot it booted, and ternd starts again.
func (r *osRig) reboot(t *testing.T) string {
	t.Helper()
	waitFor(t, "a reboot request", 30*time.Second, func() bool { _, err := os.Stat(r.marker); return err == nil })
	os.Remove(r.marker)
	r.powerCycle(t)
	return r.bootedSlot(t)
}

func (r *osRig) powerCycle(t *testing.T) {
	t.Helper()
	e := r.e
	var pids []int
	if states, err := e.agent.rt.List(context.Background()); err == nil {
		for _, s := range states {
			pids = append(pids, s.Pid, s.MonitorPid)
		}
	}
	e.agent.cancel()
	for _, p := range pids {
		if p > 0 {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	e.agent.Close()
	e.agent = nil
	unmountAll(filepath.Join(e.cfg.DataDir, "apps"))
	os.RemoveAll(e.cfg.RuncRoot)
	s, _ := OpenStore(e.cfg.DataDir)
	s.NoteBoot("before the reboot")
	s.Close()
	env, _ := r.bl.Get(context.Background())
	slot, after := update.SimulateBoot(env)
	r.bl.Set(context.Background(), after)
	os.WriteFile(filepath.Join(r.dir, "cmdline"), []byte("console=ttyS0 tern.slot="+slot+" quiet\n"), 0o644)
	e.start()
}

func unmountAll(prefix string) {
	mounts, _ := os.ReadFile("/proc/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], prefix) {
			syscall.Unmount(f[1], syscall.MNT_DETACH)
		}
	}
}

func (r *osRig) bootedSlot(t *testing.T) string {
	data, _ := os.ReadFile(filepath.Join(r.dir, "cmdline"))
	s, err := update.BootedSlot(string(data))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// settled waits until no OS update is in progress and returns the OS status.
func (r *osRig) settled(t *testing.T) OSStatus {
	t.Helper()
	var st OSStatus
	waitFor(t, "the OS update to settle", 30*time.Second, func() bool {
		var err error
		st, err = r.e.agent.OSStatus(context.Background())
		return err == nil && st.Update == ""
	})
	return st
}

func (r *osRig) env(t *testing.T) map[string]string {
	env, err := r.bl.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestOSUpdateBootsOnceAndCommits(t *testing.T) {
	r := newOSRig(t)
	image := randomImage(t, 3<<20)
	if _, err := r.e.agent.InstallOS(r.e.ctx, bytes.NewReader(r.osPkg(t, r.e.key, "2.0.0", image))); err != nil {
		t.Fatal(err)
	}
	if env := r.env(t); env[update.VarSlot] != "b" || env[update.VarUpgrade] != "1" {
		t.Fatalf("bootloader not told to try b once: %v", env)
	}
	if got, _ := os.ReadFile(filepath.Join(r.dir, "slot-b.img")); !bytes.Equal(got, image) {
		t.Fatal("slot b does not hold the image")
	}
	if slot := r.reboot(t); slot != "b" {
		t.Fatalf("booted %s, want the trial slot b", slot)
	}
	st := r.settled(t)
	if st.Booted != "b" || st.Version != "2.0.0" || st.Committed != "b" {
		t.Fatalf("after commit: %+v", st)
	}
	if env := r.env(t); env[update.VarUpgrade] != "0" || env[update.VarSlot] != "b" {
		t.Fatalf("env after commit: %v", env)
	}
	// The next boot stays on b.
	if slot := func() string { r.powerCycle(t); return r.bootedSlot(t) }(); slot != "b" {
		t.Fatalf("after a plain reboot: %s", slot)
	}
}

func TestOSUpdateWhoseBootAppsFailFallsBack(t *testing.T) {
	r := newOSRig(t)
	if _, err := r.e.agent.InstallOS(r.e.ctx, bytes.NewReader(r.osPkg(t, r.e.key, "2.0.0", randomImage(t, 1<<20)))); err != nil {
		t.Fatal(err)
	}
	// On the new OS, the boot app cannot run.
	waitFor(t, "a reboot request", 30*time.Second, func() bool { _, err := os.Stat(r.marker); return err == nil })
	os.WriteFile(filepath.Join(r.e.cfg.DataDir, "volumes", "sensor", "data", "broken"), nil, 0o644)
	os.Remove(r.marker)
	r.powerCycle(t)
	if slot := r.bootedSlot(t); slot != "b" {
		t.Fatalf("trial boot on %s", slot)
	}
	// Health fails within the window: ternd reboots, the counter falls back to a
	// (where the app works again).
	waitFor(t, "a reboot request", 30*time.Second, func() bool { _, err := os.Stat(r.marker); return err == nil })
	os.Remove(filepath.Join(r.e.cfg.DataDir, "volumes", "sensor", "data", "broken"))
	if slot := r.reboot(t); slot != "a" {
		t.Fatalf("after the failed trial the bootloader booted %s, want a", slot)
	}
	st := r.settled(t)
	if st.Booted != "a" || st.Version != "1.0.0" || st.Committed != "a" {
		t.Fatalf("after fallback: %+v", st)
	}
	if env := r.env(t); env[update.VarUpgrade] != "0" || env[update.VarSlot] != "a" {
		t.Fatalf("env after fallback: %v", env)
	}
	events, _ := r.e.agent.Events(0)
	var reason string
	for _, ev := range events {
		if ev.To == string(update.RollingBack) {
			reason = ev.Message
		}
	}
	if !strings.Contains(reason, "not healthy") {
		t.Fatalf("rollback reason %q", reason)
	}
}

func TestBadOSImagesAreRefusedBeforeTheBootloaderIsTouched(t *testing.T) {
	r := newOSRig(t)
	envBefore, _ := os.ReadFile(filepath.Join(r.dir, "bootenv"))
	slotA, _ := os.ReadFile(filepath.Join(r.dir, "slot-a.img"))
	foreign, _ := trust.GenerateKey()
	good := r.osPkg(t, r.e.key, "2.0.0", randomImage(t, 1<<20))
	flipped := bytes.Clone(good)
	flipped[len(flipped)-4096] ^= 0x20
	cases := []struct {
		name string
		pkg  []byte
		want error
	}{
		{"foreign signature", r.osPkg(t, foreign, "2.0.0", randomImage(t, 1<<20)), trust.ErrUntrustedSigner},
		{"corrupted payload", flipped, app.ErrBlobDigest},
		{"interrupted download", good[:len(good)*2/3], app.ErrTruncated},
		{"other device type", r.osPkg(t, r.e.key, "2.0.0", randomImage(t, 1<<20), "other-board"), ErrRefused},
		{"downgrade", r.osPkg(t, r.e.key, "0.9.0", randomImage(t, 1<<20)), ErrDowngrade},
		{"an app package", pkg(t, r.e.key, busyboxRoot(t), "name: x\nversion: 1.0.0\ncommand: [\"/bin/sh\"]\n"), ErrRefused},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.e.agent.InstallOS(r.e.ctx, bytes.NewReader(tc.pkg))
			if !errors.Is(err, tc.want) {
				t.Fatalf("InstallOS = %v, want %v", err, tc.want)
			}
			if env, _ := os.ReadFile(filepath.Join(r.dir, "bootenv")); !bytes.Equal(env, envBefore) {
				t.Fatal("the bootloader env changed")
			}
			if a, _ := os.ReadFile(filepath.Join(r.dir, "slot-a.img")); !bytes.Equal(a, slotA) {
				t.Fatal("the running slot changed")
			}
			if st := r.settled(t); st.Booted != "a" || st.Version != "1.0.0" || st.Slots["b"] != "" {
				t.Fatalf("status after refusal: %+v", st)
			}
		})
	}
}

// TestOSUpdatePowerLossAtEveryState cuts the power right after each state of the
// update is persisted; after as many reboots as the device asks for, it must run a
// slot whose image is the version it reports, with a clean bootloader env.
func TestOSUpdatePowerLossAtEveryState(t *testing.T) {
	for _, tc := range []struct {
		state  update.State
		broken bool   // the new OS's boot app fails: the update must roll back
		want   string // version running at the end
	}{
		{update.Staged, false, "2.0.0"},
		{update.Swapping, false, "1.0.0"},
		{update.Probation, false, "2.0.0"}, // cut before the trial boot: the bootloader tries the new slot anyway
		{update.Committed, false, "2.0.0"},
		{update.RollingBack, true, "1.0.0"},
		{update.RolledBack, true, "1.0.0"},
	} {
		t.Run(string(tc.state), func(t *testing.T) {
			r := newOSRig(t)
			image := randomImage(t, 1<<20)
			crashed := make(chan struct{})
			// The cut: right after the state is persisted, ternd stops dead (its
			// context ends, so the machine does nothing more).
			arm := func(a *Agent) {
				a.cfg.CrashAt = tc.state
				a.cfg.Crash = func(update.State) { a.cancel(); close(crashed) }
			}
			arm(r.e.agent)
			// Every ternd started after a reboot is armed too, before it boots (and
			// resumes the update).
			r.e.onNew = arm
			if tc.broken {
				os.WriteFile(filepath.Join(r.e.cfg.DataDir, "volumes", "sensor", "data", "broken"), nil, 0o644)
			}
			go r.e.agent.InstallOS(r.e.ctx, bytes.NewReader(r.osPkg(t, r.e.key, "2.0.0", image)))
			deadline := time.After(30 * time.Second)
			for crashedNow := false; !crashedNow; {
				select {
				case <-crashed:
					crashedNow = true
				case <-deadline:
					t.Fatalf("never reached %s", tc.state)
				default:
					if _, err := os.Stat(r.marker); err == nil {
						os.Remove(r.marker)
						r.powerCycle(t)
						if tc.broken && r.bootedSlot(t) == "a" {
							os.Remove(filepath.Join(r.e.cfg.DataDir, "volumes", "sensor", "data", "broken"))
						}
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			r.e.onNew = nil
			r.powerCycle(t) // the cut, right after the state was persisted
			for i := 0; ; i++ {
				st, err := r.e.agent.OSStatus(context.Background())
				if err == nil && st.Update == "" {
					break
				}
				if _, err := os.Stat(r.marker); err == nil {
					os.Remove(r.marker)
					r.powerCycle(t)
					if r.bootedSlot(t) == "a" {
						os.Remove(filepath.Join(r.e.cfg.DataDir, "volumes", "sensor", "data", "broken"))
					}
				}
				if i > 3000 {
					t.Fatal("the update never settled")
				}
				time.Sleep(10 * time.Millisecond)
			}
			st := r.settled(t)
			env := r.env(t)
			if st.Version != tc.want || env[update.VarUpgrade] != "0" || env[update.VarSlot] != st.Booted || st.Committed != st.Booted {
				t.Fatalf("ended on %+v with env %v, want %s", st, env, tc.want)
			}
			slotImage, _ := os.ReadFile(r.e.cfg.OS.Slots[st.Booted])
			if tc.want == "2.0.0" && !bytes.Equal(slotImage, image) {
				t.Fatal("the booted slot does not hold the committed image")
			}
		})
	}
}
