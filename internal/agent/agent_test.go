package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/oci"
	"github.com/tern-iot/tern/internal/trust"
)

const helloYAML = `
name: hello
version: 1.0.0
command: ["/hello", "--listen", ":8080"]
env: {GREETING: hi}
user: "1000:1000"
stop_timeout: 5s
health: {http: {port: 8080, path: /healthz}, interval: 200ms, timeout: 150ms, retries: 3}
boot: true
resources: {memory: 64Mi, pids: 64}
volumes: [{name: data, path: /data, size: 16Mi}]
`

// get fetches a URL path from an app, from inside its network namespace.
func get(t *testing.T, pid int, path string) string {
	t.Helper()
	body, err := tryGet(pid, path)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// tryGet asks the app whose init is pid, on port 8080 of its network namespace.
func tryGet(pid int, path string) (string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (netConn, error) { return dialInNetns(ctx, pid, 8080) }}
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://localhost:8080" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

func TestInstalledAppRunsAnswersAndIsHealthy(t *testing.T) {
	e := newEnv(t)
	e.install(pkg(t, e.key, helloRoot(t), helloYAML))
	waitFor(t, "hello healthy", 20*time.Second, func() bool { return e.status("hello").Health == HealthHealthy })
	st := e.status("hello")
	if st.State != StateRunning || st.Pid == 0 {
		t.Fatalf("state %+v", st)
	}
	if got := get(t, st.Pid, "/"); got != "hi from hello 1.0.0\n" {
		t.Fatalf("hello answered %q", got)
	}
	// Its user is the manifest's, not root.
	status, err := os.ReadFile(filepath.Join("/proc", itoa(st.Pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "Uid:\t1000\t1000\t1000\t1000") {
		t.Fatalf("hello does not run as uid 1000:\n%s", status)
	}
	// Its log has the start line, tagged.
	var buf bytes.Buffer
	if err := e.agent.Logs(e.ctx, "hello", -1, false, &buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), `"app":"hello","version":"1.0.0","stream":"stderr","line":"`) || !strings.Contains(buf.String(), "listening on :8080") {
		t.Fatalf("logs:\n%s", buf.String())
	}
}

func TestCrashedAppIsRestartedThenMarkedBroken(t *testing.T) {
	e := newEnv(t)
	e.install(pkg(t, e.key, busyboxRoot(t), `
name: crasher
version: 0.1.0
command: ["/bin/sh", "-c", "echo up; sleep 0.2; exit 3"]
restart: always
`))
	waitFor(t, "a restart", 20*time.Second, func() bool { return e.status("crasher").Restarts >= 1 })
	st := e.status("crasher")
	if st.LastExit == nil || st.LastExit.Code != 3 {
		t.Fatalf("last exit %+v, want code 3", st.LastExit)
	}
	// Backoff doubles from 50ms: 5 crashes in the window mark it broken.
	waitFor(t, "broken", 30*time.Second, func() bool { return e.status("crasher").State == StateBroken })
	restarts := e.status("crasher").Restarts
	time.Sleep(500 * time.Millisecond)
	if got := e.status("crasher").Restarts; got != restarts {
		t.Fatalf("a broken app was restarted: %d -> %d", restarts, got)
	}
	// An explicit start clears the mark.
	if err := e.agent.Start(e.ctx, "crasher"); err != nil {
		t.Fatal(err)
	}
	if st := e.status("crasher"); st.State == StateBroken {
		t.Fatalf("still broken after start: %+v", st)
	}
}

func TestOnFailureAppThatSucceedsStaysDown(t *testing.T) {
	e := newEnv(t)
	e.install(pkg(t, e.key, busyboxRoot(t), `
name: oneshot
version: 1.0.0
command: ["/bin/sh", "-c", "echo done"]
restart: on-failure
`))
	waitFor(t, "exited", 10*time.Second, func() bool { return e.status("oneshot").State == StateExited })
	if st := e.status("oneshot"); st.Restarts != 0 || st.LastExit == nil || st.LastExit.Code != 0 {
		t.Fatalf("%+v", st)
	}
}

func TestStopEscalatesToKillAfterGracePeriod(t *testing.T) {
	e := newEnv(t)
	e.install(pkg(t, e.key, busyboxRoot(t), `
name: stubborn
version: 1.0.0
command: ["/bin/sh", "-c", "trap 'echo ignoring TERM' TERM; while true; do sleep 0.1; done"]
stop_timeout: 1s
`))
	waitFor(t, "running", 10*time.Second, func() bool { return e.status("stubborn").State == StateRunning })
	start := time.Now()
	if err := e.agent.Stop(e.ctx, "stubborn"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	st := e.status("stubborn")
	if st.State != StateStopped || st.LastExit == nil || st.LastExit.Signal != int(syscall.SIGKILL) {
		t.Fatalf("after stop: %+v exit %+v", st, st.LastExit)
	}
	if took < time.Second {
		t.Fatalf("killed before the 1s grace period: %s", took)
	}
	// A cooperative app exits on SIGTERM with its own code.
	// Wait until hello answers: only then has it set up its SIGTERM handler; a
	// signal that lands while the process is still starting is a different case.
	e.install(pkg(t, e.key, helloRoot(t), helloYAML))
	waitFor(t, "hello to answer", 10*time.Second, func() bool {
		pid := e.status("hello").Pid
		if pid == 0 {
			return false
		}
		_, err := tryGet(pid, "/")
		return err == nil
	})
	if err := e.agent.Stop(e.ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	if st := e.status("hello"); st.LastExit == nil || st.LastExit.Code != 0 || st.LastExit.Signal != 0 {
		t.Fatalf("hello after SIGTERM: %+v", st.LastExit)
	}
}

func TestRestartedAgentAdoptsRunningContainers(t *testing.T) {
	e := newEnv(t)
	e.install(pkg(t, e.key, helloRoot(t), helloYAML))
	waitFor(t, "running", 10*time.Second, func() bool { return e.status("hello").Pid != 0 })
	pid := e.status("hello").Pid
	e.agent.Close()
	e.agent = nil
	e.start()
	st := e.status("hello")
	if st.State != StateRunning || st.Pid != pid {
		t.Fatalf("after ternd restart: %+v, want running pid %d", st, pid)
	}
	var got string
	waitFor(t, "the adopted hello to answer", 10*time.Second, func() bool { var err error; got, err = tryGet(pid, "/"); return err == nil })
	if !strings.HasPrefix(got, "hi from hello") {
		t.Fatalf("adopted hello answered %q", got)
	}
	// The adopted container is still supervised: a crash is noticed and restarted.
	syscall.Kill(pid, syscall.SIGKILL)
	waitFor(t, "restart after crash", 20*time.Second, func() bool {
		st := e.status("hello")
		return st.Restarts >= 1 && st.State == StateRunning && st.Pid != pid
	})
}

func TestBootAppsStartInOrderAfterReboot(t *testing.T) {
	e := newEnv(t)
	root := busyboxRoot(t)
	app := func(name, extra string) []byte {
		return pkg(t, e.key, root, "name: "+name+"\nversion: 1.0.0\ncommand: [\"/bin/sh\", \"-c\", \"while true; do sleep 1; done\"]\nstop_timeout: 1s\n"+extra)
	}
	e.install(app("zz-base", "boot: true\n"))
	e.install(app("aa-after", "boot: true\nafter: [zz-base]\n"))
	e.install(app("manual", "boot: false\n"))

	// Power loss: ternd, monitors and containers all gone, runc's tmpfs state and
	// mounts lost, and a new boot id.
	var pids []int
	for _, n := range []string{"zz-base", "aa-after", "manual"} {
		pids = append(pids, e.status(n).Pid)
		st, err := e.agent.rt.State(e.ctx, containerID(n, "1.0.0"))
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, st.MonitorPid)
	}
	e.agent.cancel()
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	waitFor(t, "processes gone", 10*time.Second, func() bool {
		for _, p := range pids {
			if syscall.Kill(p, 0) == nil {
				return false
			}
		}
		return true
	})
	e.agent.Close()
	e.agent = nil
	os.RemoveAll(e.cfg.RuncRoot)
	for _, n := range []string{"zz-base", "aa-after", "manual"} {
		(bundle{dir: filepath.Join(e.cfg.DataDir, "apps", n, "1.0.0")}).unmount()
	}
	s, err := OpenStore(e.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	s.NoteBoot("an earlier boot")
	s.Close()

	e.start()
	base, after, manual := e.status("zz-base"), e.status("aa-after"), e.status("manual")
	if base.State != StateRunning || after.State != StateRunning {
		t.Fatalf("boot apps not running after reboot: %+v %+v", base, after)
	}
	if manual.State == StateRunning {
		t.Fatalf("a non-boot app started at boot: %+v", manual)
	}
	if after.StartedAt.Before(base.StartedAt) {
		t.Fatalf("aa-after (after: zz-base) started at %s, before zz-base at %s", after.StartedAt, base.StartedAt)
	}
}

func TestAppsSharingALayerStoreItOnce(t *testing.T) {
	e := newEnv(t)
	root := busyboxRoot(t)
	for _, n := range []string{"one", "two"} {
		e.install(pkg(t, e.key, root, "name: "+n+"\nversion: 1.0.0\ncommand: [\"/bin/sh\", \"-c\", \"sleep 1000\"]\nstop_timeout: 1s\n"))
	}
	if layers := dirEntries(t, filepath.Join(e.cfg.DataDir, "layers")); len(layers) != 1 {
		t.Fatalf("layers on disk: %v, want the shared one once", layers)
	}
	// Removing one keeps the layer the other uses; removing both collects it.
	if err := e.agent.Remove(e.ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if layers := dirEntries(t, filepath.Join(e.cfg.DataDir, "layers")); len(layers) != 1 {
		t.Fatalf("layers after removing one app: %v", layers)
	}
	if err := e.agent.Remove(e.ctx, "two"); err != nil {
		t.Fatal(err)
	}
	if layers := dirEntries(t, filepath.Join(e.cfg.DataDir, "layers")); len(layers) != 0 {
		t.Fatalf("layers after removing both: %v", layers)
	}
	if blobs := dirEntries(t, filepath.Join(e.cfg.DataDir, "blobs", "sha256")); len(blobs) != 0 {
		t.Fatalf("blobs after removing both: %v", blobs)
	}
}

func TestBadPackagesAreRefusedAndRunningAppsUntouched(t *testing.T) {
	e := newEnv(t)
	e.install(pkg(t, e.key, helloRoot(t), helloYAML+"capabilities: {devices: [/dev/zero]}\n"))
	waitFor(t, "hello running", 10*time.Second, func() bool { return e.status("hello").Pid != 0 })
	before := e.status("hello")
	blobsBefore := dirEntries(t, filepath.Join(e.cfg.DataDir, "blobs", "sha256"))
	layersBefore := dirEntries(t, filepath.Join(e.cfg.DataDir, "layers"))

	foreign, _ := trust.GenerateKey()
	good := pkg(t, e.key, busyboxRoot(t), "name: other\nversion: 1.0.0\ncommand: [\"/bin/sh\"]\n")
	tampered := bytes.Clone(good)
	tampered[len(tampered)-2000] ^= 0x40
	cases := []struct {
		name string
		pkg  []byte
		want error
	}{
		{"foreign signature", pkg(t, foreign, busyboxRoot(t), "name: other\nversion: 1.0.0\ncommand: [\"/bin/sh\"]\n"), trust.ErrUntrustedSigner},
		{"tampered layer", tampered, app.ErrBlobDigest},
		{"truncated", good[:len(good)/2], app.ErrTruncated},
		{"not a package", []byte("hello world"), app.ErrNotPackage},
		{"forbidden capability", resignWith(t, good, e.key, func(m map[string]any) {
			m["app"].(map[string]any)["capabilities"] = map[string]any{"linux": []string{"SYS_ADMIN"}}
		}), app.ErrForbiddenCapability},
		{"device another app holds", resignWith(t, good, e.key, func(m map[string]any) {
			m["app"].(map[string]any)["capabilities"] = map[string]any{"devices": []string{"/dev/zero"}}
		}), ErrRefused},
		{"host network not allowed", resignWith(t, good, e.key, func(m map[string]any) {
			m["app"].(map[string]any)["capabilities"] = map[string]any{"network": "host"}
		}), ErrRefused},
		{"same app again", pkg(t, e.key, helloRoot(t), helloYAML), ErrAlreadyInstalled},
		{"other platform", resignWith(t, good, e.key, func(m map[string]any) {
			m["image"].(map[string]any)["platform"] = "linux/s390x"
		}), ErrRefused},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.agent.Install(e.ctx, bytes.NewReader(tc.pkg))
			if !errors.Is(err, tc.want) {
				t.Fatalf("Install = %v, want %v", err, tc.want)
			}
		})
	}
	after := e.status("hello")
	if after.Pid != before.Pid || after.State != StateRunning || after.Restarts != 0 {
		t.Fatalf("hello disturbed: before %+v after %+v", before, after)
	}
	if got := dirEntries(t, filepath.Join(e.cfg.DataDir, "blobs", "sha256")); !slices.Equal(got, blobsBefore) {
		t.Fatalf("blobs changed: %v -> %v", blobsBefore, got)
	}
	if got := dirEntries(t, filepath.Join(e.cfg.DataDir, "layers")); !slices.Equal(got, layersBefore) {
		t.Fatalf("layers changed: %v -> %v", layersBefore, got)
	}
	list, _ := e.agent.List(e.ctx)
	if len(list) != 1 {
		t.Fatalf("apps after refusals: %+v", list)
	}
}

func TestLayerThatFailsToUnpackIsRefused(t *testing.T) {
	e := newEnv(t)
	// A validly signed package whose layer climbs out of its root: the unpacker
	// refuses it, and the failed install leaves nothing behind.
	var layer bytes.Buffer
	zw := gzip.NewWriter(&layer)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "../../escape", Typeflag: tar.TypeReg, Size: 4, Mode: 0o644})
	tw.Write([]byte("evil"))
	tw.Close()
	zw.Close()
	cfg := []byte(`{"architecture":"` + goruntime.GOARCH + `","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	desc := func(mt string, b []byte) app.Descriptor {
		sum := sha256.Sum256(b)
		return app.Descriptor{MediaType: mt, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(b))}
	}
	pm := app.PackageManifest{Format: app.FormatVersion, App: app.Manifest{Name: "evil", Version: "1.0.0", Command: []string{"/x"}}}
	pm.App.ApplyDefaults()
	pm.Image = app.Image{Platform: "linux/" + goruntime.GOARCH, Config: desc(app.MediaTypeConfig, cfg), Layers: []app.Descriptor{desc(app.MediaTypeLayerGzip, layer.Bytes())}}
	data, _ := json.Marshal(pm)
	env, _ := trust.Sign(app.PayloadType, data, e.key)
	blob := func(d app.Descriptor, b []byte) app.BlobSource {
		return app.BlobSource{Descriptor: d, Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
	}
	var p bytes.Buffer
	if err := app.WritePackage(&p, data, env, map[string]app.BlobSource{
		pm.Image.Config.Digest: blob(pm.Image.Config, cfg), pm.Image.Layers[0].Digest: blob(pm.Image.Layers[0], layer.Bytes()),
	}); err != nil {
		t.Fatal(err)
	}
	_, err := e.agent.Install(e.ctx, &p)
	if !errors.Is(err, oci.ErrUnsafePath) {
		t.Fatalf("Install = %v, want ErrUnsafePath", err)
	}
	for _, d := range []string{"layers", "blobs/sha256"} {
		if got := dirEntries(t, filepath.Join(e.cfg.DataDir, d)); len(got) != 0 {
			t.Fatalf("%s after a refused install: %v", d, got)
		}
	}
	if _, err := os.Stat(filepath.Join(e.cfg.DataDir, "escape")); err == nil {
		t.Fatal("the layer wrote outside its root")
	}
}

func TestLogsFollowNewLines(t *testing.T) {
	e := newEnv(t)
	e.install(pkg(t, e.key, busyboxRoot(t), `
name: ticker
version: 1.0.0
command: ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"]
stop_timeout: 1s
`))
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(e.agent.Logs(ctx, "ticker", 0, true, pw)) }()
	buf := make([]byte, 4096)
	var got string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(got, "tick") && time.Now().Before(deadline) {
		n, err := pr.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += string(buf[:n])
	}
	if !strings.Contains(got, `"stream":"stdout","line":"tick`) {
		t.Fatalf("followed logs: %q", got)
	}
	var tail bytes.Buffer
	e.agent.Logs(e.ctx, "ticker", 2, false, &tail)
	if n := strings.Count(tail.String(), "\n"); n != 2 {
		t.Fatalf("tail 2 gave %d lines:\n%s", n, tail.String())
	}
}
