package harness

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickRun runs a small fleet through every stage against a real `tern
// server` (built from this checkout): enrollment, the connect storm, both idle
// windows, the latency probes and a three-phase campaign with a failing share.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and 50 devices")
	}
	tern := filepath.Join(t.TempDir(), "tern")
	build := exec.Command("go", "build", "-o", tern, "./cmd/tern")
	build.Dir = "../../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tern: %v\n%s", err, out)
	}
	var progress strings.Builder
	rep, err := Run(context.Background(), Options{Devices: 50, Tern: tern, Dir: t.TempDir(),
		ReportEvery: 500 * time.Millisecond, Heartbeat: 5 * time.Second, IdleWindow: 2 * time.Second, Settle: 500 * time.Millisecond,
		Probes: 10, PackageSize: 4 << 10, DownloadTime: 100 * time.Millisecond, FailRate: 0.1, CloseIdle: true,
		Timeout: 2 * time.Minute, Progress: &progress})
	t.Log("\n" + rep.Table())
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	if rep.StormOnlineN != 50 || rep.StormOnline <= 0 || rep.EnrollRate <= 0 {
		t.Errorf("storm: %d online in %s", rep.StormOnlineN, rep.StormOnline)
	}
	if rep.Probe.N != 10 || rep.RSSConnected <= rep.RSSIdle || rep.BeatRate <= 0 || rep.BurstReports < 50 {
		t.Errorf("probes %d, RSS %d -> %d, beats %.1f/s", rep.Probe.N, rep.RSSIdle, rep.RSSConnected, rep.BeatRate)
	}
	c := rep.Campaign
	if c == nil || c.State != "completed" || c.Outcomes["applied"]+c.Outcomes["rolled_back"] != 50 || c.Outcomes["rolled_back"] == 0 ||
		len(c.PhaseTimes) != 3 || c.Latency.N == 0 {
		t.Fatalf("campaign: %+v", c)
	}
}

func TestFailsIsAStableShare(t *testing.T) {
	n := 0
	for i := range 10000 {
		if fails(string(rune('a'+i%26))+strings.Repeat("x", i%7)+string(rune(i)), "r1", 0.2) {
			n++
		}
		if fails("d", "r1", 0.2) != fails("d", "r1", 0.2) {
			t.Fatal("not stable")
		}
	}
	if n < 1700 || n > 2300 {
		t.Fatalf("%d of 10000 fail at 0.2", n)
	}
}

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i))
	}
	if p := percentile(s, 50); p != 50 {
		t.Fatalf("p50 %d", p)
	}
	if p := percentile(s, 99); p != 99 {
		t.Fatalf("p99 %d", p)
	}
	if l := summarise(nil); l.N != 0 || l.String() != "no samples" {
		t.Fatalf("%+v", l)
	}
}
