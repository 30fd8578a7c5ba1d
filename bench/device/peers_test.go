package device

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tern-iot/tern/bench/peers"
	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/runtime"
	"github.com/tern-iot/tern/internal/trust"
)

// The example app as every contender gets it: one OCI image built from the rootfs
// that scripts/examples.sh makes (the static hello binary), configured like
// examples/hello/tern.yaml (command, GREETING, user 1000:1000). ternd installs a
// package built from that image's OCI layout (the same layer bytes), containerd
// imports it and podman loads it as an OCI archive, and `runc run` uses the very
// bundle ternd generated for it.
const (
	exampleRef  = "localhost/tern-bench/hello:1.0.0"
	examplePort = 8080
)

// peerRig holds ternd and the peers, each ready to start the example app.
type peerRig struct {
	dir     string
	bins    string
	img     *peers.Image
	rootfs  string
	tern    *ternd
	ctd     *peers.Containerd
	podman  *peers.Podman
	runners []peers.Runner // ternd, runc, ctr, podman, plain process
	probe   peers.Probe
}

func newPeerRig(b *testing.B) *peerRig {
	bins := build(b)
	if err := peers.Require(); err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatal(err)
		}
		b.Skip(err)
	}
	ctx := context.Background()
	r := &peerRig{dir: b.TempDir(), bins: bins, probe: peers.Probe{Comm: "hello", Want: "from hello"}}

	// The image.
	r.rootfs = filepath.Join(r.dir, "rootfs")
	os.MkdirAll(filepath.Join(r.rootfs, "bin"), 0o755)
	copyFile(b, filepath.Join(bins, "hello"), filepath.Join(r.rootfs, "hello"))
	img, err := peers.BuildImage(filepath.Join(r.dir, "image"), exampleRef, v1.Config{
		Entrypoint: []string{"/hello"}, Cmd: []string{"--listen", fmt.Sprint(":", examplePort)},
		Env: []string{"GREETING=hi"}, User: "1000:1000"}, r.rootfs)
	if err != nil {
		b.Fatal(err)
	}
	r.img = img

	// ternd, with the example app installed from the image and stopped.
	r.tern = startTernd(b, bins)
	b.Cleanup(r.tern.close)
	r.tern.install(b, r.examplePackage(b, "hello"))
	if _, err := r.tern.c.Verb(ctx, "hello", "stop"); err != nil {
		b.Fatal(err)
	}
	volume := filepath.Join(r.tern.data, "volumes", "hello", "data")

	// runc: ternd's own config.json of the app, its overlay root file system.
	var cfg specs.Spec
	raw, err := os.ReadFile(filepath.Join(r.tern.data, "apps", "hello", "1.0.0", "config.json"))
	if err == nil {
		err = json.Unmarshal(raw, &cfg)
	}
	if err != nil {
		b.Fatal(err)
	}
	rc, err := peers.NewRunc(filepath.Join(r.dir, "runc"), cfg, examplePort)
	if err != nil {
		b.Fatal(err)
	}

	// The limits and the volume of tern.yaml, given to ctr and podman too;
	// seccomp is on for all (ctr needs --seccomp for its default profile).
	m := r.exampleManifest(b, "hello")
	if r.ctd, err = peers.StartContainerd(ctx, filepath.Join(r.dir, "containerd")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.ctd.Close() })
	if err := r.ctd.Import(ctx, img); err != nil {
		b.Fatal(err)
	}
	ctr := &peers.Ctr{C: r.ctd, Image: img, AppPort: examplePort, Args: []string{"--seccomp",
		"--memory-limit", fmt.Sprint(int64(m.Resources.Memory)), "--cpus", fmt.Sprint(m.Resources.CPU),
		"--mount", "type=bind,src=" + volume + ",dst=/data,options=rbind:rw"}}
	if r.podman, err = peers.NewPodman(filepath.Join(r.dir, "podman")); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.podman.Close() })
	if err := r.podman.Load(ctx, img); err != nil {
		b.Fatal(err)
	}
	r.podman.AppPort = examplePort
	r.podman.Args = []string{"--network", "none", "--memory", fmt.Sprint(int64(m.Resources.Memory)),
		"--cpus", fmt.Sprint(m.Resources.CPU), "--pids-limit", fmt.Sprint(m.Resources.Pids), "-v", volume + ":/data"}

	proc := &peers.Process{Binary: filepath.Join(bins, "hello"), Env: []string{"GREETING=hi"}}
	r.runners = []peers.Runner{&terndRunner{c: r.tern.c, app: "hello"}, rc, ctr, r.podman, proc}
	return r
}

// exampleManifest is examples/hello/tern.yaml under another name.
func (r *peerRig) exampleManifest(b *testing.B, name string) *app.Manifest {
	data, err := os.ReadFile("../../examples/hello/tern.yaml")
	if err != nil {
		b.Fatal(err)
	}
	m, err := app.ParseYAML(data)
	if err != nil {
		b.Fatal(err)
	}
	m.Name = name
	return m
}

// examplePackage builds the example app's package from the rig's OCI layout.
func (r *peerRig) examplePackage(b *testing.B, name string) []byte {
	var buf bytes.Buffer
	_, err := app.Build(context.Background(), app.BuildOptions{Source: app.Source{Kind: app.SourceOCI, Path: r.img.Layout},
		Manifest: r.exampleManifest(b, name), Keys: []trust.PrivateKey{r.tern.key}, TempDir: r.dir}, &buf)
	if err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// terndRunner starts and stops installed apps through ternd's API, as `tern device
// start` and `stop` do. With app set, every instance is that app; otherwise the
// instance id names the app.
type terndRunner struct {
	c   *agent.Client
	app string
}

func (r *terndRunner) Name() string    { return "ternd start" }
func (r *terndRunner) Port(string) int { return examplePort }
func (r *terndRunner) name(id string) string {
	if r.app != "" {
		return r.app
	}
	return id
}

func (r *terndRunner) Start(ctx context.Context, id string) error {
	_, err := r.c.Verb(ctx, r.name(id), "start")
	return err
}

func (r *terndRunner) Stop(ctx context.Context, id string) error {
	_, err := r.c.Verb(ctx, r.name(id), "stop")
	return err
}

// short names a runner in metric units.
func short(name string) string { return strings.Fields(name)[0] }

// BenchmarkPeers compares ternd with runc, containerd (ctr), podman and a plain
// process on the example app. Each sub-benchmark measures all contenders in one
// run, interleaved:
//
//	StartToAnswer: from the start command (or API call) to the app's first answer
//	  to GET / on its port, each iteration one start of each contender, in a
//	  shuffled order; medians and ratios to ternd.
//	RunToExit: hyperfine of `runc run`, `ctr run --rm` and `podman run --rm` of
//	  busybox true, the measure the published anchors use.
//	MonitorMemory: the per-container monitor (tern-monitor, conmon,
//	  containerd-shim-runc-v2) with 1 and 10 apps running, VmRSS and Pss.
func BenchmarkPeers(b *testing.B) {
	r := newPeerRig(b)
	b.Run("StartToAnswer", r.benchStart)
	b.Run("RunToExit", r.benchRunToExit)
	b.Run("MonitorMemory", r.benchMemory)
}

func (r *peerRig) benchStart(b *testing.B) {
	ctx := context.Background()
	all := make([]peers.StartResult, len(r.runners))
	for b.Loop() {
		res, err := peers.MeasureStart(ctx, r.runners, r.probe, 1, 100*time.Millisecond, nil)
		if err != nil {
			b.Fatal(err)
		}
		for i := range res {
			all[i].Name = res[i].Name
			all[i].Samples = append(all[i].Samples, res[i].Samples...)
		}
	}
	base := peers.Median(all[0].Answered())
	b.Logf("%d starts each; ms from the command to the app's first answer (and to the command's return)", len(all[0].Samples))
	b.Logf("%-15s %8s %8s %8s %8s %8s %12s", "", "min", "median", "p90", "max", "returned", "x ternd")
	for _, res := range all {
		a := res.Answered()
		med := peers.Median(a)
		b.Logf("%-15s %8.1f %8.1f %8.1f %8.1f %8.1f %12.2f", res.Name, peers.Ms(peers.Quantile(a, 0)), peers.Ms(med),
			peers.Ms(peers.Quantile(a, 0.9)), peers.Ms(peers.Quantile(a, 1)), peers.Ms(peers.Median(res.Returned())), float64(med)/float64(base))
		b.ReportMetric(peers.Ms(med), "ms-answer-"+short(res.Name))
		b.ReportMetric(peers.Ms(peers.Median(res.Returned())), "ms-returned-"+short(res.Name))
		if res.Name != all[0].Name {
			b.ReportMetric(float64(med)/float64(base), "x-ternd-"+short(res.Name))
		}
	}
	b.ReportMetric(0, "ns/op")
}

// benchRunToExit runs hyperfine on run-to-exit of `true` in a busybox image, the
// way the anchors (runc run 52 ms, ctr run 201 ms, podman run 331 ms) were
// measured, so that this machine's figures can be set beside them. runc's bundle
// is the config ternd's runtime generates (seccomp, limits, new namespaces).
// Iterations: hyperfine --runs takes b.N.
func (r *peerRig) benchRunToExit(b *testing.B) {
	hf, err := exec.LookPath("hyperfine")
	if err != nil {
		b.Skip("hyperfine is not installed (scripts/bench.sh installs it)")
	}
	ctx := context.Background()
	dir := b.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	copyFile(b, "/bin/busybox", filepath.Join(rootfs, "bin", "busybox"))
	os.Symlink("busybox", filepath.Join(rootfs, "bin", "true"))
	const ref = "localhost/tern-bench/busybox:1"
	img, err := peers.BuildImage(filepath.Join(dir, "image"), ref, v1.Config{Cmd: []string{"/bin/true"}}, rootfs)
	if err != nil {
		b.Fatal(err)
	}
	if err := r.ctd.Import(ctx, img); err != nil {
		b.Fatal(err)
	}
	pm, err := peers.NewPodman(filepath.Join(dir, "podman"))
	if err != nil {
		b.Fatal(err)
	}
	defer pm.Close()
	if err := pm.Load(ctx, img); err != nil {
		b.Fatal(err)
	}
	cfg, err := runtime.Generate(runtime.Spec{ID: "true", RootFS: rootfs, Args: []string{"/bin/true"}, CgroupParent: "/tern-bench"})
	if err != nil {
		b.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(bundle, 0o700)
	j, _ := json.Marshal(cfg)
	os.WriteFile(filepath.Join(bundle, "config.json"), j, 0o600)

	n := 0
	for b.Loop() {
		n++
	}
	runs := fmt.Sprint(max(n, 10))
	cmds := []struct{ name, cmd string }{
		{"runc", fmt.Sprintf("runc --root %s run --bundle %s true", filepath.Join(dir, "runc-root"), bundle)},
		{"ctr", fmt.Sprintf("ctr --address %s --namespace tern-bench run --rm --fifo-dir %s --runc-root %s --seccomp %s true /bin/true",
			r.ctd.Sock, filepath.Join(r.ctd.Dir, "fifo"), filepath.Join(r.ctd.Dir, "runc"), ref)},
		{"podman", fmt.Sprintf("podman %s run --rm --network none %s /bin/true", strings.Join(pm.GlobalArgs(), " "), ref)},
		{"process", filepath.Join(rootfs, "bin", "busybox") + " true"},
	}
	args := []string{"-N", "--warmup", "3", "--runs", runs, "--export-json", filepath.Join(dir, "hf.json"), "--style", "none"}
	for _, c := range cmds {
		args = append(args, "-n", c.name, c.cmd)
	}
	cmd := exec.Command(hf, args...)
	cmd.Env = pm.Env()
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("hyperfine: %v\n%s", err, out)
	}
	var res struct {
		Results []struct {
			Command                string
			Mean, Median, Min, Max float64
			Stddev                 float64
		}
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "hf.json"))
	if err := json.Unmarshal(raw, &res); err != nil {
		b.Fatal(err)
	}
	b.Logf("hyperfine -N --warmup 3 --runs %s; ms", runs)
	for _, x := range res.Results {
		b.Logf("%-8s median %6.1f  mean %6.1f ± %5.1f  min %6.1f  max %6.1f", x.Command, x.Median*1e3, x.Mean*1e3, x.Stddev*1e3, x.Min*1e3, x.Max*1e3)
		b.ReportMetric(x.Median*1e3, "ms-run-to-exit-"+x.Command)
	}
	b.ReportMetric(0, "ns/op")
}

// benchMemory measures the monitors of 1 and 10 running apps for ternd,
// containerd and podman (runc run -d and a plain process have none), and the
// daemons beside them (ternd, containerd; podman has none).
func (r *peerRig) benchMemory(b *testing.B) {
	ctx := context.Background()
	for i := range 10 {
		name := fmt.Sprintf("mon%d", i)
		r.tern.install(b, r.examplePackage(b, name))
		if _, err := r.tern.c.Verb(ctx, name, "stop"); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
	}
	contenders := []struct {
		r      peers.Runner
		daemon int
	}{{&terndRunner{c: r.tern.c}, r.tern.cmd.Process.Pid}, {r.runners[2], r.ctd.Pid()}, {r.runners[3], 0}}
	b.Logf("%-14s %-24s %4s %10s %10s %10s %14s", "", "monitor", "apps", "VmRSS KiB", "Anon KiB", "Pss KiB", "daemon Pss KiB")
	for _, n := range []int{1, 10} {
		for _, c := range contenders {
			m, err := peers.MeasureMonitors(ctx, c.r, "mon", n, r.probe, 3*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			var daemon peers.Mem
			if c.daemon != 0 {
				daemon, _ = peers.ReadMem(c.daemon)
			}
			mean := m.Mean()
			b.Logf("%-14s %-24s %4d %10.0f %10.0f %10.0f %14.0f", c.r.Name(), m.Comm, n, mean.VmRSS, mean.RssAnon, mean.Pss, daemon.Pss)
			k := fmt.Sprintf("%s-%d", short(c.r.Name()), n)
			b.ReportMetric(mean.VmRSS/1024, "MiB-monitor-rss-"+k)
			b.ReportMetric(mean.Pss/1024, "MiB-monitor-pss-"+k)
			if c.daemon != 0 {
				b.ReportMetric(daemon.Pss/1024, "MiB-daemon-pss-"+k)
			}
		}
	}
	b.ReportMetric(0, "ns/op")
}
