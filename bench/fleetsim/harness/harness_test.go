package harness

import (
	"context"
	"os"
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
	tern := buildTern(t)
	var progress strings.Builder
	rep, err := Run(context.Background(), Options{Devices: 50, Tern: tern, Dir: t.TempDir(),
		ReportEvery: 500 * time.Millisecond, Heartbeat: 5 * time.Second, IdleWindow: 2 * time.Second, Settle: 500 * time.Millisecond,
		Probes: 10, PackageSize: 4 << 10, DownloadTime: 100 * time.Millisecond, FailRate: 0.1, CloseIdle: true,
		// The failing 5 of 50 land in the campaign's phases by the server's order,
		// so a phase of 5 may hold several: the campaign goes on through them, for
		// the test is of the simulator, not of thresholds (the store tests those).
		Success: "1", MaxFailures: "100%",
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
	if c == nil || c.State != "completed" || c.Outcomes["applied"]+c.Outcomes["rolled_back"] != 50 || c.Outcomes["rolled_back"] != 5 ||
		len(c.PhaseTimes) != 3 || c.Latency.N == 0 {
		t.Fatalf("campaign: %+v", c)
	}
}

func buildTern(t *testing.T) string {
	t.Helper()
	tern := filepath.Join(t.TempDir(), "tern")
	build := exec.Command("go", "build", "-o", tern, "./cmd/tern")
	build.Dir = "../../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tern: %v\n%s", err, out)
	}
	return tern
}

// TestRunThroughBridgedBrokers runs a small fleet through two Mosquitto edge
// brokers bridged to a central one that the server uses as its external broker:
// presence, reports and a campaign's documents all cross the bridges.
func TestRunThroughBridgedBrokers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server, three brokers and 40 devices")
	}
	if _, err := mosquittoBin(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	tern := buildTern(t)
	var progress strings.Builder
	rep, err := Run(context.Background(), Options{Devices: 40, Tern: tern, Dir: t.TempDir(), Brokers: 2,
		ReportEvery: 500 * time.Millisecond, Heartbeat: -1, IdleWindow: time.Second, Settle: 500 * time.Millisecond,
		Probes: 5, PackageSize: 4 << 10, DownloadTime: 100 * time.Millisecond, CloseIdle: true,
		Timeout: 2 * time.Minute, Progress: &progress})
	t.Log("\n" + rep.Table())
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	if rep.StormOnlineN != 40 || rep.Probe.N != 5 {
		t.Errorf("storm: %d online; %d probes", rep.StormOnlineN, rep.Probe.N)
	}
	// 20 devices on each edge, one descriptor each (and some of its own).
	if !strings.Contains(rep.Brokers, "2 Mosquitto edge brokers") || rep.BrokerRSS <= 0 || rep.BrokerFDs < 20 {
		t.Errorf("brokers: %q, RSS %d, descriptors %d", rep.Brokers, rep.BrokerRSS, rep.BrokerFDs)
	}
	// The server holds no device connection: its broker is the central one.
	if rep.FDsConnected >= 40 {
		t.Errorf("the server holds %d descriptors with 40 devices connected elsewhere", rep.FDsConnected)
	}
	if c := rep.Campaign; c == nil || c.State != "completed" || c.Outcomes["applied"] != 40 || len(c.PhaseTimes) != 3 {
		t.Fatalf("campaign: %+v", c)
	}
}

func TestFailsIsAnExactShare(t *testing.T) {
	for _, rate := range []float64{0.01, 0.1, 0.2, 0.5} {
		for _, release := range []string{"r1", "r2", "a-longer-release-name"} {
			for _, n := range []int{7, 50, 1000} {
				for from := range 3 {
					got := 0
					for i := from; i < from+n; i++ {
						if fails(i, release, rate) {
							got++
						}
						if fails(i, release, rate) != fails(i, release, rate) {
							t.Fatal("not stable")
						}
					}
					if want := float64(n) * rate; float64(got) < want-1 || float64(got) > want+1 {
						t.Errorf("rate %.2f, release %s, devices %d-%d: %d fail, want %.1f", rate, release, from, from+n-1, got, want)
					}
				}
			}
		}
	}
	same := 0
	for i := range 1000 {
		if fails(i, "r1", 0.1) && fails(i, "r2", 0.1) {
			same++
		}
	}
	if same == 100 {
		t.Error("every release fails on the same devices")
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
