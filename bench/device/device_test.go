// Package device measures ternd as a device runs it: app start latency through the
// agent and beside runc, containerd (ctr), podman and a plain process (the harness
// of bench/peers); the per-app monitor's memory beside conmon's and
// containerd-shim's; ternd's footprint and binary size; install throughput against
// a plain copy; disk used by shared layers; bytes an update downloads; what an
// update costs (time to commit, the service gap); and an OS image install.
//
// Run as root: scripts/bench.sh (make bench) runs them in groups and prints a
// table; one benchmark alone, e.g.
//
//	go test -v -run='^$' -bench='Peers/StartToAnswer' -benchtime=30x ./bench/device/
//
// Results are recorded in docs/BENCHMARKS.md.
package device

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tern-iot/tern/bench/peers"
	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/trust"
)

var (
	once sync.Once
	bins string
	berr error
)

// build compiles ternd, tern-monitor and hello, stripped, once. It builds only
// what a device runs: the tern CLI (cmd/tern, which links the server) is not
// needed, so a change in progress there never blocks the device benchmarks.
func build(b *testing.B) string {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root and runc")
	}
	once.Do(func() {
		bins, berr = os.MkdirTemp("", "tern-bench-bin-")
		for _, p := range [][2]string{{"ternd", "./cmd/ternd"}, {"tern-monitor", "./cmd/tern-monitor"}, {"hello", "./examples/hello"}} {
			cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -X main.version=1.0.0", "-o", filepath.Join(bins, p[0]), p[1])
			cmd.Dir = "../.."
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				berr = fmt.Errorf("%v: %s", err, out)
				return
			}
		}
	})
	if berr != nil {
		b.Fatal(berr)
	}
	return bins
}

type device struct {
	a    *agent.Agent
	key  trust.PrivateKey
	root string // rootfs with hello and busybox
	dir  string
}

func newDevice(b *testing.B) *device {
	bins := build(b)
	dir := b.TempDir()
	key, _ := trust.GenerateKey()
	a, err := agent.New(agent.Config{
		DataDir: filepath.Join(dir, "data"), Keys: []trust.PublicKey{key.Public()},
		RuncRoot: filepath.Join(dir, "runc"), MonitorPath: filepath.Join(bins, "tern-monitor"),
		CgroupParent: "/tern-bench", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := a.Boot(context.Background()); err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	copyFile(b, filepath.Join(bins, "hello"), filepath.Join(root, "hello"))
	copyFile(b, "/bin/busybox", filepath.Join(root, "bin", "busybox"))
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))
	os.Symlink("busybox", filepath.Join(root, "bin", "sleep"))
	d := &device{a: a, key: key, root: root, dir: dir}
	b.Cleanup(func() {
		list, _ := a.List(context.Background())
		for _, s := range list {
			a.Remove(context.Background(), s.Name)
		}
		a.Close()
	})
	return d
}

func copyFile(b *testing.B, from, to string) {
	data, err := os.ReadFile(from)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		b.Fatal(err)
	}
}

func (d *device) pkg(b *testing.B, yaml string) []byte {
	m, err := app.ParseYAML([]byte(yaml))
	if err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := app.Build(context.Background(), app.BuildOptions{Source: app.Source{Kind: app.SourceRootFS, Path: d.root}, Manifest: m, Keys: []trust.PrivateKey{d.key}, TempDir: b.TempDir()}, &buf); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

func (d *device) install(b *testing.B, p []byte) time.Duration {
	start := time.Now()
	if _, err := d.a.Install(context.Background(), bytes.NewReader(p)); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func helloYAML(name, version, extra string) string {
	return "name: " + name + "\nversion: " + version + "\ncommand: [\"/hello\", \"--listen\", \":8080\"]\nstop_timeout: 2s\n" + extra
}

// BenchmarkAppStartThroughTernd times `tern device start` of a stopped example app:
// from the request to its process running (the agent's Start returns then).
func BenchmarkAppStartThroughTernd(b *testing.B) {
	d := newDevice(b)
	d.install(b, d.pkg(b, helloYAML("hello", "1.0.0", "")))
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		if err := d.a.Stop(ctx, "hello"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := d.a.Start(ctx, "hello"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInstallToRunning times a whole install of the example app: package
// verified, stored, unpacked, container started.
func BenchmarkInstallToRunning(b *testing.B) {
	d := newDevice(b)
	p := d.pkg(b, helloYAML("hello", "1.0.0", ""))
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		d.install(b, p)
		b.StopTimer()
		d.a.Remove(context.Background(), "hello")
		b.StartTimer()
	}
}

// BenchmarkUpdateCommitAndGap updates the example app (1s probation, health checked)
// and reports the time from install to committed beyond the probation window, and
// the service gap: the longest time during the swap when GET / got no answer.
func BenchmarkUpdateCommitAndGap(b *testing.B) {
	d := newDevice(b)
	health := "probation: 1s\nhealth: {http: {port: 8080, path: /healthz}, interval: 100ms, timeout: 100ms, retries: 2}\n"
	d.install(b, d.pkg(b, helloYAML("hello", "1.0.0", health)))
	var total, gaps []time.Duration
	v := 1
	for b.Loop() {
		v++
		p := d.pkg(b, helloYAML("hello", fmt.Sprintf("1.%d.0", v), health))
		stop := make(chan struct{})
		gapc := make(chan time.Duration)
		go func() { gapc <- longestGap(d, stop) }()
		total = append(total, d.install(b, p))
		close(stop)
		gaps = append(gaps, <-gapc)
	}
	b.ReportMetric(float64(median(total)-time.Second)/1e6, "ms-commit-beyond-probation")
	b.ReportMetric(float64(median(gaps))/1e6, "ms-service-gap")
}

// longestGap polls hello every 2ms (inside its current container's network) until
// stop, and returns the longest stretch without an answer.
func longestGap(d *device, stop chan struct{}) time.Duration {
	last := time.Now()
	var worst time.Duration
	for {
		select {
		case <-stop:
			return worst
		default:
		}
		if ask(d) {
			now := time.Now()
			worst = max(worst, now.Sub(last))
			last = now
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func ask(d *device) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return d.a.DialApp(ctx, "hello", 8080) }}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://hello/", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(body), "from hello")
}

func median(ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

// BenchmarkFootprint runs the real ternd binary with 0, 3 and 10 example apps,
// idle, and reports ternd's RSS and CPU, the monitors' RSS, and the binaries'
// sizes (stripped, as built for a device).
func BenchmarkFootprint(b *testing.B) {
	bins := build(b)
	for b.Loop() {
	}
	for _, name := range []string{"ternd", "tern-monitor"} {
		fi, _ := os.Stat(filepath.Join(bins, name))
		b.ReportMetric(float64(fi.Size())/(1<<20), "MiB-"+name)
		b.ReportMetric(float64(fi.Size())/1e6, "MB-"+name)
	}
	for _, apps := range []int{0, 3, 10} {
		mem, cpu, mon := idleTernd(b, bins, apps)
		b.Logf("ternd with %2d apps: VmRSS %.1f MiB (anonymous %.1f, file %.1f), CPU %.1f%% of a core", apps,
			mem.VmRSS/1024, mem.RssAnon/1024, mem.RssFile/1024, cpu)
		b.ReportMetric(mem.VmRSS/1024, fmt.Sprintf("MiB-ternd-rss-%d-apps", apps))
		b.ReportMetric(mem.RssAnon/1024, fmt.Sprintf("MiB-ternd-anon-%d-apps", apps))
		b.ReportMetric(cpu, fmt.Sprintf("pct-ternd-cpu-%d-apps", apps))
		if apps > 0 {
			b.ReportMetric(mon, fmt.Sprintf("MiB-monitor-rss-%d-apps", apps))
		}
	}
}

// idleTernd starts ternd with n apps (the example app, health checked over HTTP
// every 5 s), lets it settle 2 s and idle 10 s, and measures ternd's memory at the
// end, its CPU over those 10 s, and the monitors' mean RSS.
func idleTernd(b *testing.B, bins string, n int) (mem peers.Mem, cpuPct, monitorMiB float64) {
	t := startTernd(b, bins)
	defer t.close()
	root := filepath.Join(t.dir, "rootfs")
	os.MkdirAll(root, 0o755)
	copyFile(b, filepath.Join(bins, "hello"), filepath.Join(root, "hello"))
	d := &device{key: t.key, root: root}
	ctx := context.Background()
	var monitors []int
	for i := range n {
		name := fmt.Sprintf("app%d", i)
		if _, err := t.c.Install(ctx, bytes.NewReader(d.pkg(b, helloYAML(name, "1.0.0", "health: {http: {port: 8080, path: /healthz}, interval: 5s}\n")))); err != nil {
			b.Fatal(err)
		}
		st, _ := t.c.Inspect(ctx, name)
		monitors = append(monitors, parentPid(st.Pid))
	}
	time.Sleep(2 * time.Second) // settle: GC, first health checks
	pid := t.cmd.Process.Pid
	t0 := cpuTicks(pid)
	time.Sleep(10 * time.Second)
	t1 := cpuTicks(pid)
	cpuPct = float64(t1-t0) / 100 / 10 * 100 // ticks at 100 Hz over 10 s
	mem, _ = peers.ReadMem(pid)
	for _, m := range monitors {
		monitorMiB += rss(m) / float64(len(monitors))
	}
	return mem, cpuPct, monitorMiB
}

func rss(pid int) float64 {
	m, _ := peers.ReadMem(pid)
	return m.VmRSS / 1024
}

func cpuTicks(pid int) int { return peers.CPUTicks(pid) }

func parentPid(pid int) int { return peers.ParentPid(pid) }
