package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/tern-iot/tern/internal/agent"
)

// TestUpdateSurvivesCrashAtEveryState kills ternd right after the update machine
// persists each state, once alone (SIGKILL: containers live on) and once with all
// its containers and monitors (power loss: runc's state, mounts and the boot id
// gone too). After a restart, each case must end with exactly one version of the
// app running, the one the recovery table says, and a consistent store.
func TestUpdateSurvivesCrashAtEveryState(t *testing.T) {
	requireRunc(t)
	work := t.TempDir()
	keyBase := filepath.Join(work, "keys", "release")
	if out, err := tern("keys", "generate", "--out", keyBase); err != nil {
		t.Fatal(err, out)
	}
	rootfs := filepath.Join(work, "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	hello, _ := os.ReadFile(filepath.Join(bin, "hello"))
	os.WriteFile(filepath.Join(rootfs, "hello"), hello, 0o755)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("busybox-static is not installed")
		}
		t.Skip("needs /bin/busybox")
	}
	os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755)
	os.Symlink("busybox", filepath.Join(rootfs, "bin", "sh"))
	os.Symlink("busybox", filepath.Join(rootfs, "bin", "sleep"))
	build := func(name, version, command string) string {
		manifest := filepath.Join(work, name+".yaml")
		os.WriteFile(manifest, []byte(fmt.Sprintf("name: hello\nversion: %s\ncommand: %s\nprobation: 1s\nstop_timeout: 2s\n", version, command)), 0o644)
		out := filepath.Join(work, name+".tern")
		if o, err := tern("app", "build", "--from", "rootfs:"+rootfs, "--manifest", manifest, "--key", keyBase+".key", "-o", out); err != nil {
			t.Fatal(err, o)
		}
		return out
	}
	v1 := build("v1", "1.0.0", `["/hello", "--listen", ":8080"]`)
	good := build("v2good", "2.0.0", `["/hello", "--listen", ":8080"]`)
	bad := build("v2bad", "2.0.0", `["/bin/sh", "-c", "sleep 0.3; exit 1"]`)

	cases := []struct {
		state string
		pkg   string
		want  string // the version that must run at the end
	}{
		{"staged", good, "2.0.0"},      // resumed: the verified update carries on
		{"swapping", good, "1.0.0"},    // half a swap: back to the known-good version
		{"probation", good, "2.0.0"},   // a whole window watched again, then committed
		{"committed", good, "2.0.0"},   // commit finished
		{"rolling_back", bad, "1.0.0"}, // rollback finished
		{"rolled_back", bad, "1.0.0"},  // discard finished
	}
	n := 0
	for _, powerLoss := range []bool{false, true} {
		for _, tc := range cases {
			kind := "ternd-killed"
			if powerLoss {
				kind = "power-loss"
			}
			n++
			t.Run(kind+"/"+tc.state, func(t *testing.T) {
				dir := t.TempDir()
				os.MkdirAll(filepath.Join(dir, "trust"), 0o755)
				pub, _ := os.ReadFile(keyBase + ".pub")
				os.WriteFile(filepath.Join(dir, "trust", "release.pub"), pub, 0o644)

				d := startDevice(t, dir, "--debug-crash-at", tc.state)
				defer func() {
					d.tern("device", "remove", "hello")
					d.kill()
				}()
				d.mustTern("device", "install", v1)
				d.tern("device", "install", tc.pkg) // ternd dies during this install
				if err := d.cmd.Wait(); err == nil {
					t.Fatalf("ternd did not crash at %s:\n%s", tc.state, d.log)
				}
				if powerLoss {
					powerOff(t, dir)
				}
				d = startDevice(t, dir)
				waitFor(t, "update settled", func() bool {
					st, ok := d.ps()["hello"]
					return ok && st.Update == "" && st.State == "running"
				})
				st := d.ps()["hello"]
				if st.Version != tc.want {
					t.Fatalf("runs %s, want %s\n%s", st.Version, tc.want, d.log)
				}
				if running := runningContainers(t, dir); !slices.Equal(running, []string{"hello-" + tc.want}) {
					t.Fatalf("running containers %v, want exactly hello-%s", running, tc.want)
				}
				bundles, _ := os.ReadDir(filepath.Join(dir, "data", "apps", "hello"))
				var versions []string
				for _, b := range bundles {
					versions = append(versions, b.Name())
				}
				wantBundles, wantPrev := []string{"1.0.0"}, ""
				if tc.want == "2.0.0" {
					wantBundles, wantPrev = []string{"1.0.0", "2.0.0"}, "1.0.0"
				}
				if !slices.Equal(versions, wantBundles) || st.Previous != wantPrev {
					t.Fatalf("bundles %v previous %q, want %v %q", versions, st.Previous, wantBundles, wantPrev)
				}
			})
		}
	}
	t.Logf("%d crash cases", n)
}

// powerOff makes what a power cut leaves of a device: every monitor and container
// killed, mounts and runc's tmpfs state gone, and a new boot id at the next start.
func powerOff(t *testing.T, dir string) {
	t.Helper()
	recs, _ := filepath.Glob(filepath.Join(dir, "data", "containers", "*", "monitor.json"))
	var pids []int
	for _, r := range recs {
		var m struct {
			MonitorPid int `json:"monitor_pid"`
			InitPid    int `json:"init_pid"`
		}
		data, _ := os.ReadFile(r)
		json.Unmarshal(data, &m)
		pids = append(pids, m.MonitorPid, m.InitPid)
	}
	for _, p := range pids {
		if p > 0 {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	waitFor(t, "processes gone", func() bool {
		for _, p := range pids {
			if p > 0 && syscall.Kill(p, 0) == nil {
				if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p)); err == nil && !strings.Contains(string(st), ") Z ") {
					return false
				}
			}
		}
		return true
	})
	mounts, _ := os.ReadFile("/proc/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], filepath.Join(dir, "data", "apps")) {
			syscall.Unmount(f[1], syscall.MNT_DETACH)
		}
	}
	os.RemoveAll(filepath.Join(dir, "runc"))
	s, err := agent.OpenStore(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	s.NoteBoot("a boot before the power cut")
	s.Close()
}

// runningContainers lists the containers runc reports running.
func runningContainers(t *testing.T, dir string) []string {
	t.Helper()
	out, err := exec.Command("runc", "--root", filepath.Join(dir, "runc"), "list", "-f", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var list []struct{ ID, Status string }
	json.Unmarshal(out, &list)
	var ids []string
	for _, c := range list {
		if c.Status == "running" {
			ids = append(ids, c.ID)
		}
	}
	slices.Sort(ids)
	return ids
}
