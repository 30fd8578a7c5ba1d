package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"mime/multipart"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/trust"
)

// campaign uploads the release and runs a campaign of it to the fleet.
func (h *run) campaign(ctx context.Context, label string, pkg []byte) error {
	o := h.o
	rel := "rel-" + label
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	mw.WriteField("name", rel)
	fw, _ := mw.CreateFormFile("package", "sim.tern")
	fw.Write(pkg)
	mw.Close()
	if err := h.c.Upload(ctx, "/api/v1/releases", mw.FormDataContentType(), &buf, nil); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	cr := &CampaignReport{Phases: o.Phases, PackageBytes: len(pkg), DownloadTime: o.DownloadTime, FailRate: o.FailRate}
	h.r.Campaign = cr
	name := "camp-" + label
	h.tr.mu.Lock()
	h.tr.campName = name
	h.tr.mu.Unlock()
	s0, d0, b0 := h.server(), h.db(), h.bt.sample()
	h.resetPeak()
	h.progress("campaign %s: phases %s, %d KiB package, download %s, fail rate %.1f%%", name, strings.Join(o.Phases, ","),
		len(pkg)>>10, o.DownloadTime, o.FailRate*100)
	t0 := time.Now()
	if err := h.c.Do(ctx, "POST", "/api/v1/campaigns", map[string]any{"name": name, "release": rel, "selector": "fleet=" + label,
		"phases": o.Phases, "success": o.Success, "max_failures": o.MaxFailures}, nil); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	limit := min(15*time.Minute, 3*time.Minute+time.Duration(o.Devices)*30*time.Millisecond)
	last := time.Now()
	err := h.waitFor(ctx, limit, func() bool {
		_, _, _, out, ended := h.tr.counts()
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			h.progress("  %d devices reported an outcome; campaign %s", out, map[bool]string{true: "running", false: ended}[ended == ""])
		}
		return (ended == "completed" && out >= o.Devices) || (ended != "" && ended != "completed")
	})
	s1, d1, b1 := h.server(), h.db(), h.bt.sample()
	h.r.BrokerCampaignCPU = b1.CPU - b0.CPU
	p := h.peakNow()
	cr.ServerCPU, cr.DBCPU, cr.PeakRSS, cr.PeakFDs = s1.CPU-s0.CPU, d1.CPU-d0.CPU, p.RSS, p.FDs
	h.tr.mu.Lock()
	cr.State, cr.Reason = h.tr.ended, h.tr.reason
	if !h.tr.tEnded.IsZero() {
		cr.Ended = h.tr.tEnded.Sub(t0)
	}
	if !h.tr.tReach.IsZero() {
		cr.Reached = h.tr.tReach.Sub(t0)
	}
	cr.Outcomes = map[string]int{}
	for _, s := range h.tr.outcome {
		cr.Outcomes[s]++
	}
	for _, ph := range h.tr.phases {
		var pr PhaseReport
		if !ph.Started.IsZero() {
			pr.Started = ph.Started.Sub(t0)
		}
		if !ph.Completed.IsZero() {
			pr.Completed = ph.Completed.Sub(t0)
		}
		cr.PhaseTimes = append(cr.PhaseTimes, pr)
	}
	cr.Latency = summarise(h.tr.desLat)
	h.tr.mu.Unlock()
	if err != nil {
		h.note("campaign: %d of %d devices reported an outcome; state %q", len(h.tr.outcome), o.Devices, cr.State)
		return fmt.Errorf("campaign: %w", err)
	}
	if cr.State != "completed" {
		return fmt.Errorf("campaign %s: %s", cr.State, cr.Reason)
	}
	h.progress("campaign completed in %s; every device reached in %s", cr.Ended.Round(time.Millisecond), cr.Reached.Round(time.Millisecond))
	return nil
}

// buildPackage builds a signed app package holding size incompressible bytes.
func buildPackage(ctx context.Context, dir string, key trust.PrivateKey, size int) ([]byte, error) {
	root := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "app"), []byte("#!/bin/sh\necho simulated\n"), 0o755); err != nil {
		return nil, err
	}
	noise := make([]byte, size)
	rand.Read(noise)
	if err := os.WriteFile(filepath.Join(root, "data"), noise, 0o644); err != nil {
		return nil, err
	}
	m, err := app.ParseYAML([]byte("name: simapp\nversion: 1.0.0\ncommand: [\"/bin/app\"]\n"))
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := app.Build(ctx, app.BuildOptions{Source: app.Source{Kind: app.SourceRootFS, Path: root}, Manifest: m,
		Keys: []trust.PrivateKey{key}, TempDir: dir}, &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
