package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/store"
)

func rssKiB(pid int) int {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}

// TestServerScale measures the time to enroll N devices (TERN_BENCH_DEVICES,
// default 1000) and the server's RSS with them all connected. It runs only with
// TERN_BENCH=1 and asserts nothing about time: the numbers go to the log.
func TestServerScale(t *testing.T) {
	if os.Getenv("TERN_BENCH") == "" {
		t.Skip("set TERN_BENCH=1")
	}
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("TERN_BENCH_DEVICES")); err == nil {
		n = v
	}
	dir := t.TempDir()
	srv := startFleetServer(t, dir)
	pid := srv.cmd.Process.Pid
	c := server.NewClient(srv.url, srv.admin, srv.fingerprint)
	ctx := context.Background()
	var tok struct{ Token string }
	if err := c.Do(ctx, "POST", "/api/v1/tokens", map[string]any{"max_uses": n}, &tok); err != nil {
		t.Fatal(err)
	}
	t.Logf("server RSS idle: %d KiB", rssKiB(pid))
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	ids := make([]*link.Identity, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				id, err := link.Enroll(ctx, srv.url, tok.Token, filepath.Join(dir, "dev", strconv.Itoa(i)), quiet)
				if err != nil {
					t.Error(err)
					return
				}
				ids[i] = id
			}
		}()
	}
	wg.Wait()
	enrollTime := time.Since(start)
	t.Logf("enrolled %d devices in %v (%.1f/s, 8 concurrent clients); server RSS %d KiB", n, enrollTime.Round(time.Millisecond),
		float64(n)/enrollTime.Seconds(), rssKiB(pid))

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	report := func(context.Context) (link.Reported, error) {
		return link.Reported{AgentVersion: "bench", OS: "linux", Arch: "amd64", Apps: json.RawMessage(`[]`)}, nil
	}
	start = time.Now()
	var done sync.WaitGroup
	for _, id := range ids {
		done.Add(1)
		cl := link.NewClient(link.ClientConfig{Identity: id, Report: report, ReportEvery: time.Hour, Logger: quiet})
		go func() { defer done.Done(); cl.Run(cctx) }()
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		var ds []store.Device
		if err := c.Do(ctx, "GET", "/api/v1/devices?status=online&limit=1000", nil, &ds); err == nil && len(ds) >= min(n, 1000) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("devices did not all come online")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%d devices connected (all online) in %v; server RSS %d KiB", n, time.Since(start).Round(time.Millisecond), rssKiB(pid))
	cancel()
	done.Wait()
}
