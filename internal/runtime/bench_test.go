package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkStartLatency measures Runtime.Start of a long-running process:
// config written, monitor spawned, runc run --detach, until the
// process runs. Stopping and removing are not timed.
func BenchmarkStartLatency(b *testing.B) {
	rt, _ := newRuntime(b)
	ctx := context.Background()
	bundle, logs := b.TempDir(), b.TempDir()
	for b.Loop() {
		s := baseSpec(b, "sleep", "1000")
		if _, err := rt.Start(ctx, s, bundle, LogConfig{Dir: logs}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := rt.Stop(ctx, s.ID, 0); err != nil {
			b.Fatal(err)
		}
		if err := rt.Remove(ctx, s.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkStartToExit measures Runtime.Start and Wait of /bin/true: the
// same work as BenchmarkRuncRun, plus the monitor.
func BenchmarkStartToExit(b *testing.B) {
	rt, _ := newRuntime(b)
	ctx := context.Background()
	bundle, logs := b.TempDir(), b.TempDir()
	for b.Loop() {
		s := baseSpec(b, "true")
		if _, err := rt.Start(ctx, s, bundle, LogConfig{Dir: logs}); err != nil {
			b.Fatal(err)
		}
		if _, err := rt.Wait(ctx, s.ID); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := rt.Remove(ctx, s.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkRuncRun is the baseline: plain `runc run` of /bin/true with the
// config Generate writes (create, start, wait, delete in one command).
func BenchmarkRuncRun(b *testing.B) {
	e := requireEnv(b)
	root, bundle := b.TempDir(), b.TempDir()
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devNull.Close()
	for b.Loop() {
		s := baseSpec(b, "true")
		cfg, err := Generate(s)
		if err != nil {
			b.Fatal(err)
		}
		j, _ := json.Marshal(cfg)
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), j, 0o600); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(e.runc, "--root", root, "run", "--bundle", bundle, s.ID)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = devNull, devNull, devNull
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMonitorRSS reports the memory of idle monitors (three
// containers running): VmRSS as ps shows it, RssAnon (private to each
// monitor) and Pss (its share of the pages monitors share).
func BenchmarkMonitorRSS(b *testing.B) {
	rt, _ := newRuntime(b)
	var pids []int
	var logDirs []string
	for range 3 {
		s := baseSpec(b, "/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done")
		dir := b.TempDir()
		st := start(b, rt, s, LogConfig{Dir: dir})
		pids, logDirs = append(pids, st.MonitorPid), append(logDirs, dir)
	}
	for b.Loop() {
		// Nothing to time: the metrics below are the result.
	}
	// Let log lines flow so that the monitors reach their steady state.
	for _, dir := range logDirs {
		eventually(b, "ten log lines", func() bool { return len(readLogs(b, dir)) >= 10 })
	}
	var rss, anon, pss float64
	for _, pid := range pids {
		m, err := monitorMemory(pid)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("monitor %d: %s", pid, m)
		rss += m.vmRSS
		anon += m.rssAnon
		pss += m.pss
	}
	n := float64(len(pids))
	b.ReportMetric(rss/n, "KiB-VmRSS")
	b.ReportMetric(anon/n, "KiB-RssAnon")
	b.ReportMetric(pss/n, "KiB-Pss")
	b.ReportMetric(0, "ns/op")
}

type memory struct{ vmRSS, rssAnon, rssFile, pss float64 }

func (m memory) String() string {
	return fmt.Sprintf("VmRSS %.0f KiB (RssAnon %.0f, RssFile %.0f), Pss %.0f KiB", m.vmRSS, m.rssAnon, m.rssFile, m.pss)
}

// monitorMemory reads a process's memory from /proc/PID/status and
// /proc/PID/smaps_rollup, in KiB.
func monitorMemory(pid int) (memory, error) {
	var m memory
	st, err := procStatus(pid)
	if err != nil {
		return m, err
	}
	kib := func(s string) float64 {
		n, _ := strconv.ParseFloat(strings.TrimSuffix(s, " kB"), 64)
		return n
	}
	m.vmRSS, m.rssAnon, m.rssFile = kib(st["VmRSS"]), kib(st["RssAnon"]), kib(st["RssFile"])
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && k == "Pss" {
				m.pss = kib(strings.TrimSpace(v))
			}
		}
	}
	return m, nil
}

func TestMonitorFootprint(t *testing.T) {
	rt, _ := newRuntime(t)
	logDir := t.TempDir()
	s := baseSpec(t, "/bin/sh", "-c", "while true; do echo tick; sleep 0.05; done")
	st := start(t, rt, s, LogConfig{Dir: logDir})
	eventually(t, "ten log lines", func() bool { return len(readLogs(t, logDir)) >= 10 })
	m, err := monitorMemory(st.MonitorPid)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tern-monitor %d after 10 log lines: %s", st.MonitorPid, m)
}
