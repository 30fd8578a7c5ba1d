package device

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/trust"
)

// BenchmarkOSInstall256MB streams a 256 MiB OS image (a signed package) into a slot
// through the real ternd, and, for comparison, copies the same package bytes to a
// file with fsync (a plain download's cost on this disk). It reports both, their
// ratio, and ternd's peak RSS (VmHWM) during the install.
func BenchmarkOSInstall256MB(b *testing.B) {
	bins := build(b)
	dir := b.TempDir()
	key, _ := trust.GenerateKey()
	img := filepath.Join(dir, "rootfs.img")
	makeImage(b, img, 256<<20)
	var pkg bytes.Buffer
	if _, err := app.BuildOS(context.Background(), app.OSBuildOptions{Image: img, Version: "2.0.0", DeviceTypes: []string{"bench"},
		Keys: []trust.PrivateKey{key}, TempDir: dir}, &pkg); err != nil {
		b.Fatal(err)
	}
	pkgPath := filepath.Join(dir, "os.tern")
	os.WriteFile(pkgPath, pkg.Bytes(), 0o644)
	os.Remove(img)

	// A device's link: 100 Mbit/s. Both the plain download and ternd's install
	// read the package at that rate; the install decompresses, hashes and writes
	// the slot while the bytes arrive.
	const rate = 100e6 / 8
	var stream, plain, local, localCopy []time.Duration
	var hwm float64
	for b.Loop() {
		d, peak := installOS(b, bins, dir, key, pkgPath, 0)
		local = append(local, d)
		hwm = max(hwm, peak)
		localCopy = append(localCopy, copyFile2(b, pkgPath, filepath.Join(dir, "copy"), 0))
		d, _ = installOS(b, bins, dir, key, pkgPath, rate)
		stream = append(stream, d)
		plain = append(plain, copyFile2(b, pkgPath, filepath.Join(dir, "copy"), rate))
	}
	b.ReportMetric(float64(median(stream))/1e6, "ms-install-100Mbit")
	b.ReportMetric(float64(median(plain))/1e6, "ms-download-100Mbit")
	b.ReportMetric(float64(median(stream))/float64(median(plain)), "ratio-100Mbit")
	b.ReportMetric(float64(median(local))/1e6, "ms-install-local")
	b.ReportMetric(float64(median(localCopy))/1e6, "ms-copy-local")
	b.ReportMetric(hwm, "MiB-ternd-peak-rss")
	b.ReportMetric(float64(pkg.Len())/(1<<20), "MiB-package")
}

// makeImage writes n bytes that compress like a file system image: blocks of
// noise, text and zeros.
func makeImage(b *testing.B, path string, n int) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 1<<20)
	for i := 0; i < n/len(block); i++ {
		switch i % 3 {
		case 0:
			rand.Read(block)
		case 1:
			copy(block, bytes.Repeat([]byte("tern os image text block "), len(block)/25+1))
		default:
			clear(block)
		}
		f.Write(block)
	}
}

func installOS(b *testing.B, bins, dir string, key trust.PrivateKey, pkgPath string, rate float64) (time.Duration, float64) {
	run := filepath.Join(dir, fmt.Sprintf("run-%d", time.Now().UnixNano()))
	os.MkdirAll(filepath.Join(run, "trust"), 0o755)
	os.WriteFile(filepath.Join(run, "trust", "k.pub"), trust.MarshalPublicKey(key.Public()), 0o644)
	os.WriteFile(filepath.Join(run, "cmdline"), []byte("tern.slot=a\n"), 0o644)
	os.WriteFile(filepath.Join(run, "slot-a"), nil, 0o600)
	cfg := fmt.Sprintf("device_type: bench\nslots: {a: %s/slot-a, b: %s/slot-b}\nbootloader: {kind: file, env_file: %s/env}\nreboot_command: [\"true\"]\ncmdline: %s/cmdline\nfactory_version: 1.0.0\n", run, run, run, run)
	os.WriteFile(filepath.Join(run, "os.yaml"), []byte(cfg), 0o644)
	sock := filepath.Join(run, "s.sock")
	cmd := exec.Command(filepath.Join(bins, "ternd"), "--data", filepath.Join(run, "data"), "--socket", sock, "--trust", filepath.Join(run, "trust"),
		"--runtime-root", filepath.Join(run, "runc"), "--os-config", filepath.Join(run, "os.yaml"))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait(); os.RemoveAll(run) }()
	c, _ := agent.NewClient("unix://" + sock)
	for i := 0; ; i++ {
		if _, err := c.List(context.Background()); err == nil {
			break
		}
		if i > 200 {
			b.Fatal("ternd did not start")
		}
		time.Sleep(25 * time.Millisecond)
	}
	f, _ := os.Open(pkgPath)
	defer f.Close()
	start := time.Now()
	if _, err := c.InstallOS(context.Background(), throttle(f, rate, start)); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	return took, vmHWM(cmd.Process.Pid)
}

func vmHWM(pid int) float64 {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

// copyFile2 copies src to dst (reading at most rate bytes/s, 0 for no limit) and
// fsyncs it, timing it: a plain download.
func copyFile2(b *testing.B, src, dst string, rate float64) time.Duration {
	start := time.Now()
	in, _ := os.Open(src)
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(out, throttle(in, rate, start))
	out.Sync()
	out.Close()
	d := time.Since(start)
	os.Remove(dst)
	return d
}

// throttle reads r no faster than rate bytes per second (0: no limit).
func throttle(r io.Reader, rate float64, start time.Time) io.Reader {
	if rate == 0 {
		return r
	}
	return &throttled{r: r, rate: rate, start: start}
}

type throttled struct {
	r     io.Reader
	rate  float64
	start time.Time
	n     int64
}

func (t *throttled) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	if due := t.start.Add(time.Duration(float64(t.n) / t.rate * 1e9)); time.Until(due) > 0 {
		time.Sleep(time.Until(due))
	}
	n, err := t.r.Read(p)
	t.n += int64(n)
	return n, err
}
