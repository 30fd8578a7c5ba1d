// Package harness runs a simulated fleet (bench/fleetsim devices) against a real
// `tern server` and measures it: enrollment rate, the connect storm, the
// server's CPU and memory per connected device, the latency from a device's event
// to the server's event stream (SSE), and a phased campaign to every device.
//
// The harness starts the server itself (SQLite, or PostgreSQL in a throwaway
// cluster) or uses one given by URL and admin key. It holds the devices in worker
// processes of at most PerProc devices each, since one process here holds at most
// ~19,900 descriptors; `fleetsim -worker` is such a process.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/tern-iot/tern/bench/fleetsim"
	"github.com/tern-iot/tern/internal/server"
	"github.com/tern-iot/tern/internal/trust"
)

// Options configures a run. Zero fields take the defaults noted.
type Options struct {
	Devices int // default 200

	// DB is "sqlite" (default), "postgres" (a throwaway cluster the harness
	// starts) or a postgres:// URL of an empty database.
	DB string
	// Tern is the tern binary that runs the server.
	Tern string
	// ServerArgs are extra `tern server` flags.
	ServerArgs []string
	// ServerURL and AdminKey name a running server to use instead of starting one
	// (CAFingerprint pins it; empty trusts what it presents). ServerPID, if set,
	// is its process, for CPU and memory.
	ServerURL, AdminKey, CAFingerprint string
	ServerPID                          int

	// Brokers, if above 0, puts that many Mosquitto brokers between the devices
	// and the server, bridged to a central Mosquitto that the server uses as its
	// external broker (--broker): past what one process holds connections for.
	// Devices are spread over them by index. 0: the server's embedded broker.
	Brokers int

	// Dir holds the run's files (default a new temporary directory, removed at
	// the end unless Keep).
	Dir  string
	Keep bool

	// PerProc is the most devices one worker process holds (default 8,000: a
	// device needs a descriptor for MQTT and one more while it downloads).
	// WorkerExe starts a worker process (e.g. {"/path/fleetsim", "-worker"}); when
	// nil, the devices run in this process (measured here, a process that holds a
	// thousand devices and reads the event stream adds tens of milliseconds to
	// the latency it measures).
	PerProc   int
	WorkerExe []string

	EnrollConcurrency int     // enrollment requests in flight (default 32)
	ConnectRate       float64 // devices connecting per second (default 0: all at once, a storm)

	KeepAlive   uint16        // MQTT keepalive, seconds (default 30, ternd's)
	ReportEvery time.Duration // how often a device's link looks at its reported state (default 10s, ternd's)
	Heartbeat   time.Duration // a reported-state change per device this often (default 5m; <0: none)
	IdleWindow  time.Duration // each of the two windows idle CPU is measured over (default 20s)
	Settle      time.Duration // wait after the storm before measuring idle (default 5s)
	Probes      int           // reported-state probes for the event latency (default 200)

	NoCampaign   bool
	Phases       []string      // default 10%, 50%, 100%
	PackageSize  int           // bytes of incompressible data in the package (default 64 KiB)
	DownloadTime time.Duration // added to each device's download (default 1s; <0: none)
	FailRate     float64       // share of devices on which the update fails (rolled back)
	Success      string        // a phase's success threshold (default 100%, less with FailRate)
	MaxFailures  string        // the campaign's failure threshold (default 0, more with FailRate)
	CloseIdle    bool          // devices close their HTTPS connections after a download, as ternd does

	Timeout  time.Duration // bounds the whole run (default 20m)
	Progress io.Writer     // progress lines (default none)
}

func (o *Options) defaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if o.Devices <= 0 {
		o.Devices = 200
	}
	if o.DB == "" {
		o.DB = "sqlite"
	}
	if o.PerProc <= 0 {
		o.PerProc = 8000
	}
	if o.EnrollConcurrency <= 0 {
		o.EnrollConcurrency = 32
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 30
	}
	def(&o.ReportEvery, 10*time.Second)
	def(&o.Heartbeat, 5*time.Minute)
	def(&o.IdleWindow, 20*time.Second)
	def(&o.Settle, 5*time.Second)
	def(&o.DownloadTime, time.Second)
	def(&o.Timeout, 20*time.Minute)
	if o.Heartbeat < 0 {
		o.Heartbeat = 0
	}
	if o.DownloadTime < 0 {
		o.DownloadTime = 0
	}
	if o.Probes == 0 {
		o.Probes = 200
	}
	if len(o.Phases) == 0 {
		o.Phases = []string{"10%", "50%", "100%"}
	}
	if o.PackageSize <= 0 {
		o.PackageSize = 64 << 10
	}
	if o.Success == "" && o.MaxFailures == "" {
		o.Success, o.MaxFailures = "100%", "0"
		if o.FailRate > 0 {
			m := int(o.FailRate*200+0.999) + 2 // twice the rate, and some
			o.Success, o.MaxFailures = fmt.Sprintf("%d%%", 100-m), fmt.Sprintf("%d%%", m)
		}
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Report is what a run measured.
type Report struct {
	Devices    int      `json:"devices"`
	DB         string   `json:"db"`
	Procs      int      `json:"worker_procs"`
	CPUs       int      `json:"cpus"`
	Load       []string `json:"load"` // 1-minute load average at the start and the end
	Started    time.Time
	Took       time.Duration
	Command    string   `json:"command,omitempty"`
	ServerLog  string   `json:"server_log,omitempty"`
	Notes      []string `json:"notes,omitempty"`
	HaveServer bool     `json:"have_server_metrics"`

	EnrollTime       time.Duration `json:"enroll_ns"`
	EnrollRate       float64       `json:"enroll_per_s"`
	EnrollServerCPU  time.Duration `json:"enroll_server_cpu_ns"`
	EnrollDBCPU      time.Duration `json:"enroll_db_cpu_ns"`
	EnrollConcurrent int           `json:"enroll_concurrency"`

	StormOnline     time.Duration `json:"storm_online_ns"`   // start -> every device online (on the stream)
	StormReported   time.Duration `json:"storm_reported_ns"` // -> every device's reported state stored
	StormOnlineN    int           `json:"storm_online"`
	StormServerCPU  time.Duration `json:"storm_server_cpu_ns"`
	StormDBCPU      time.Duration `json:"storm_db_cpu_ns"`
	ConnectRate     float64       `json:"connect_rate"`
	RSSIdle         int64         `json:"rss_idle"` // the server before any device
	RSSEnrolled     int64         `json:"rss_enrolled"`
	RSSConnected    int64         `json:"rss_connected"` // after the idle window
	PerDeviceBytes  int64         `json:"per_device_bytes"`
	FDsConnected    int           `json:"fds_connected"`
	IdleWindow      time.Duration `json:"idle_window_ns"`
	IdleCPU         float64       `json:"idle_cpu_cores"` // server CPU over the idle window (keepalives only), in cores
	IdleDBCPU       float64       `json:"idle_db_cpu_cores"`
	BeatCPU         float64       `json:"beat_cpu_cores"` // the same with every device's heartbeat on
	BeatDBCPU       float64       `json:"beat_db_cpu_cores"`
	BeatRate        float64       `json:"beat_reports_per_s"` // reported-state changes stored per second
	BurstReports    int           `json:"burst_reports"`      // the report burst: one reported-state change per device
	BurstTime       time.Duration `json:"burst_ns"`
	BurstDBCPU      time.Duration `json:"burst_db_cpu_ns"`
	PerReportCPU    time.Duration `json:"per_report_cpu_ns"` // server (and database) CPU per stored report, above idle
	DBPSS           int64         `json:"db_pss,omitempty"`
	KeepAlive       uint16        `json:"keepalive_s"`
	Heartbeat       time.Duration `json:"heartbeat_ns"`
	Probe           Latency       `json:"probe_latency"`
	ProbeIn         Latency       `json:"probe_in_latency"`    // of which: from the device to the server receiving it
	ProbeFresh      Latency       `json:"probe_fresh_latency"` // from the server receiving it to a second, new stream
	Campaign        *CampaignReport
	SimRSS          int64         `json:"sim_rss"`
	SimCPU          time.Duration `json:"sim_cpu_ns"`
	PeakRSS         int64         `json:"peak_rss"`
	PeakFDs         int           `json:"peak_fds"`
	StreamedByType  map[string]int
	ServerExitError string `json:"server_exit,omitempty"`

	// With Options.Brokers: the brokers (summed over the Mosquitto processes).
	Brokers           string        `json:"brokers,omitempty"`
	BrokerStormCPU    time.Duration `json:"broker_storm_cpu_ns,omitempty"`
	BrokerIdleCPU     float64       `json:"broker_idle_cpu_cores,omitempty"`
	BrokerRSS         int64         `json:"broker_rss,omitempty"` // connected, after the idle window
	BrokerFDs         int           `json:"broker_fds,omitempty"` // the most held by one broker
	BrokerCampaignCPU time.Duration `json:"broker_campaign_cpu_ns,omitempty"`
}

// CampaignReport is the campaign part of a run.
type CampaignReport struct {
	Phases       []string      `json:"phases"`
	PackageBytes int           `json:"package_bytes"`
	DownloadTime time.Duration `json:"download_ns"`
	FailRate     float64       `json:"fail_rate"`
	State        string        `json:"state"`
	Reason       string        `json:"reason,omitempty"`
	Ended        time.Duration `json:"ended_ns"`   // creation -> completed (or paused) on the stream
	Reached      time.Duration `json:"reached_ns"` // creation -> the last device reported its outcome
	Outcomes     map[string]int
	PhaseTimes   []PhaseReport `json:"phase_times"`
	Latency      Latency       `json:"event_latency"`
	ServerCPU    time.Duration `json:"server_cpu_ns"`
	DBCPU        time.Duration `json:"db_cpu_ns"`
	PeakRSS      int64         `json:"peak_rss"`
	PeakFDs      int           `json:"peak_fds"`
}

// PhaseReport is when a phase started and completed, from the campaign's creation.
type PhaseReport struct {
	Started   time.Duration `json:"started_ns"`
	Completed time.Duration `json:"completed_ns"`
}

// run is one run's state.
type run struct {
	o      Options
	r      *Report
	dir    string
	start  time.Time
	srv    *ternServer
	pg     *postgres
	pid    int // the server's process, 0 if unknown
	c      *server.Client
	url    string
	tr     *tracker
	ws     []*worker
	bt     *brokerTree
	peakMu sync.Mutex
	peak   procSample
}

func (h *run) progress(format string, args ...any) {
	fmt.Fprintf(h.o.Progress, "fleetsim %6.1fs  %s\n", time.Since(h.start).Seconds(), fmt.Sprintf(format, args...))
}

func (h *run) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	h.r.Notes = append(h.r.Notes, msg)
	h.progress("NOTE: %s", msg)
}

func (h *run) server() procSample {
	if h.pid == 0 {
		return procSample{At: time.Now()}
	}
	return sampleProc(h.pid)
}

func (h *run) db() procSample {
	if h.pg == nil || h.pg.pid() == 0 {
		return procSample{At: time.Now()}
	}
	return sampleTree(h.pg.pid())
}

// resetPeak starts a new peak window; peakSince returns it.
func (h *run) resetPeak() {
	h.peakMu.Lock()
	h.peak = procSample{}
	h.peakMu.Unlock()
}

func (h *run) peakNow() procSample {
	h.peakMu.Lock()
	defer h.peakMu.Unlock()
	return h.peak
}

// sampler records the server's peak RSS and descriptors, every second.
func (h *run) sampler(ctx context.Context) {
	if h.pid == 0 {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := sampleProc(h.pid)
		h.peakMu.Lock()
		h.peak.RSS, h.peak.FDs = max(h.peak.RSS, s.RSS), max(h.peak.FDs, s.FDs)
		h.r.PeakRSS, h.r.PeakFDs = max(h.r.PeakRSS, s.RSS), max(h.r.PeakFDs, s.FDs)
		h.peakMu.Unlock()
	}
}

// Run runs a fleet against a server and returns what it measured. A failed stage
// ends the run with an error and the report so far.
func Run(ctx context.Context, o Options) (*Report, error) {
	o.defaults()
	h := &run{o: o, start: time.Now(), r: &Report{Devices: o.Devices, DB: o.DB, CPUs: runtime.NumCPU(), Load: []string{loadAvg()},
		Started: time.Now().UTC(), EnrollConcurrent: o.EnrollConcurrency, ConnectRate: o.ConnectRate, KeepAlive: o.KeepAlive,
		Heartbeat: o.Heartbeat, IdleWindow: o.IdleWindow}}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	err := h.run(ctx)
	h.stop()
	h.r.Load = append(h.r.Load, loadAvg())
	h.r.Took = time.Since(h.start)
	if h.tr != nil {
		h.tr.mu.Lock()
		h.r.StreamedByType = h.tr.streamed
		h.tr.mu.Unlock()
	}
	if !o.Keep && o.Dir == "" && h.dir != "" {
		os.RemoveAll(h.dir)
	}
	return h.r, err
}

func (h *run) stop() {
	if len(h.ws) > 0 {
		var sim procSample
		seen := map[int]bool{}
		for _, w := range h.ws {
			if !seen[w.pid()] {
				seen[w.pid()] = true
				s := sampleProc(w.pid())
				sim.RSS += s.RSS
				sim.CPU += s.CPU
			}
		}
		h.r.SimRSS, h.r.SimCPU = sim.RSS, sim.CPU
	}
	if h.srv != nil {
		if !h.srv.alive() {
			h.r.ServerExitError = fmt.Sprint(h.srv.exitErr)
		}
		h.srv.stop() // first: the devices then find no one to say goodbye to
	}
	var wg sync.WaitGroup
	for _, w := range h.ws {
		wg.Add(1)
		go func() { defer wg.Done(); w.stop(10 * time.Second) }()
	}
	wg.Wait()
	h.bt.stop()
	h.pg.stop()
}

func (h *run) run(ctx context.Context) error {
	o := h.o
	h.dir = o.Dir
	if h.dir == "" {
		d, err := os.MkdirTemp("", "fleetsim-")
		if err != nil {
			return err
		}
		h.dir = d
	}
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return err
	}
	os.Chmod(h.dir, 0o755) // PostgreSQL runs as its own user, under it

	// The release the campaign rolls out, signed by a key the server (and so the
	// devices, at enrollment) will trust.
	key, err := trust.GenerateKey()
	if err != nil {
		return err
	}
	pkg, err := buildPackage(ctx, filepath.Join(h.dir, "pkg"), key, o.PackageSize)
	if err != nil {
		return fmt.Errorf("package: %w", err)
	}

	// The server (and its database).
	dbURL := ""
	switch {
	case o.DB == "sqlite":
	case o.DB == "postgres":
		h.progress("starting PostgreSQL")
		if h.pg, err = startPostgres(filepath.Join(h.dir, "pg")); err != nil {
			return err
		}
		dbURL = h.pg.url("tern")
	case strings.HasPrefix(o.DB, "postgres://"), strings.HasPrefix(o.DB, "postgresql://"):
		dbURL = o.DB
		h.r.DB = "postgres"
	default:
		return fmt.Errorf("db %q: want sqlite, postgres or a postgres:// URL", o.DB)
	}
	fp := o.CAFingerprint
	admin := o.AdminKey
	if o.ServerURL == "" {
		if o.Tern == "" {
			return errors.New("no tern binary to run the server (Options.Tern)")
		}
		h.progress("starting tern server (%s)", h.r.DB)
		args, central := o.ServerArgs, ""
		if o.Brokers > 0 {
			if central, err = reserveCentralAddr(); err != nil {
				return err
			}
			args = append(append([]string{}, args...), "--broker", "mqtts://"+central)
		}
		if h.srv, err = startServer(ctx, o.Tern, filepath.Join(h.dir, "server"), dbURL, args); err != nil {
			return err
		}
		if o.Brokers > 0 {
			h.progress("starting %d Mosquitto brokers bridged to a central one", o.Brokers)
			if h.bt, err = startBrokerTree(ctx, filepath.Join(h.dir, "brokers"), filepath.Join(h.dir, "server", "data"), central, o.Brokers); err != nil {
				return err
			}
			h.r.Brokers = h.bt.describe()
		}
		h.url, admin, h.pid = h.srv.url, h.srv.admin, h.srv.pid()
		h.r.ServerLog = h.srv.log
	} else {
		h.url, h.pid = strings.TrimSuffix(o.ServerURL, "/"), o.ServerPID
	}
	h.r.HaveServer = h.pid != 0
	if fp == "" {
		u, err := url.Parse(h.url)
		if err != nil {
			return err
		}
		if fp, err = server.FetchCAFingerprint(ctx, u.Host); err != nil {
			return err
		}
	}
	h.c = server.NewClient(h.url, admin, fp)
	go h.sampler(ctx)

	label := "sim-" + randomHex(4)
	if err := h.c.Do(ctx, "POST", "/api/v1/release-keys", map[string]any{"name": "fleetsim-" + label,
		"public_key": string(trust.MarshalPublicKey(key.Public()))}, nil); err != nil {
		return fmt.Errorf("release key: %w", err)
	}
	var tok struct{ Token string }
	if err := h.c.Do(ctx, "POST", "/api/v1/tokens", map[string]any{"max_uses": o.Devices, "labels": map[string]string{"fleet": label}}, &tok); err != nil {
		return fmt.Errorf("token: %w", err)
	}

	// Follow the event stream from the start.
	h.tr = newTracker(o.Devices)
	streamCtx, stopStream := context.WithCancel(ctx)
	defer stopStream()
	go h.c.Follow(streamCtx, 0, h.tr.onStream)

	// Enrollment.
	s0, d0 := h.server(), h.db()
	h.r.RSSIdle = s0.RSS
	dirs := make([]string, o.Devices)
	for i := range dirs {
		dirs[i] = filepath.Join(h.dir, "devices", fmt.Sprintf("d%05d", i))
	}
	h.progress("enrolling %d devices (%d requests in flight)", o.Devices, o.EnrollConcurrency)
	t := time.Now()
	idDirs := make([]string, len(dirs))
	for i, d := range dirs {
		idDirs[i] = fleetsim.IdentityDir(d)
	}
	ids, err := fleetsim.Provision(ctx, h.url, tok.Token, idDirs, o.EnrollConcurrency)
	if err != nil {
		return fmt.Errorf("enrollment: %w", err)
	}
	h.r.EnrollTime = time.Since(t)
	h.r.EnrollRate = float64(o.Devices) / h.r.EnrollTime.Seconds()
	s1, d1 := h.server(), h.db()
	h.r.RSSEnrolled, h.r.EnrollServerCPU, h.r.EnrollDBCPU = s1.RSS, s1.CPU-s0.CPU, d1.CPU-d0.CPU
	h.progress("enrolled %d in %s (%.0f/s)", o.Devices, h.r.EnrollTime.Round(time.Millisecond), h.r.EnrollRate)
	h.tr.mu.Lock()
	h.tr.ours = map[string]bool{}
	for _, id := range ids {
		h.tr.ours[id] = true
	}
	h.tr.mu.Unlock()

	// Workers.
	procs := (o.Devices + o.PerProc - 1) / o.PerProc
	exe := o.WorkerExe
	if exe == nil && procs > 1 {
		h.note("%d devices in this one process (no worker executable): over %d, descriptors may run out", o.Devices, o.PerProc)
		procs = 1
	}
	h.r.Procs = procs
	wcfg := WorkerConfig{KeepAlive: o.KeepAlive, ReportEvery: o.ReportEvery, Heartbeat: o.Heartbeat, DownloadTime: o.DownloadTime,
		FailRate: o.FailRate, CloseIdle: o.CloseIdle}
	if h.bt != nil {
		wcfg.Brokers = h.bt.edges
	}
	h.progress("loading devices in %d worker(s)", procs)
	for p := range procs {
		from, to := p*o.Devices/procs, (p+1)*o.Devices/procs
		wc := wcfg
		wc.Dirs, wc.First = dirs[from:to], from
		wc.Log = exe != nil
		w, err := startWorker(ctx, wc, from, to, exe, filepath.Join(h.dir, fmt.Sprintf("worker%d.log", p)), h.tr.onWorker)
		if err != nil {
			return err
		}
		h.ws = append(h.ws, w)
	}
	for _, w := range h.ws {
		select {
		case err := <-w.ready:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// The stream must have caught up with the enrollments before the storm.
	if err := h.waitFor(ctx, time.Minute, func() bool {
		h.tr.mu.Lock()
		defer h.tr.mu.Unlock()
		return h.tr.streamed["enrolled"] >= o.Devices
	}); err != nil {
		h.note("the event stream did not show every enrollment: %v", err)
	}

	// The connect storm.
	sPre, dPre, bPre := h.server(), h.db(), h.bt.sample()
	h.progress("connecting %d devices (%s)", o.Devices, map[bool]string{true: "all at once", false: fmt.Sprintf("%.0f/s", o.ConnectRate)}[o.ConnectRate == 0])
	h.resetPeak()
	tStorm := time.Now()
	for _, w := range h.ws {
		if err := w.send(command{Op: "start", Rate: o.ConnectRate / float64(len(h.ws))}); err != nil {
			return err
		}
	}
	stormLimit := min(15*time.Minute, 2*time.Minute+time.Duration(o.Devices)*20*time.Millisecond)
	last := time.Now()
	err = h.waitFor(ctx, stormLimit, func() bool {
		on, rep, _, _, _ := h.tr.counts()
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			h.progress("  %d online, %d reported", on, rep)
		}
		return on >= o.Devices && rep >= o.Devices
	})
	h.tr.mu.Lock()
	h.r.StormOnlineN = len(h.tr.online)
	if !h.tr.tOnline.IsZero() {
		h.r.StormOnline = h.tr.tOnline.Sub(tStorm)
	}
	if !h.tr.tReported.IsZero() {
		h.r.StormReported = h.tr.tReported.Sub(tStorm)
	}
	h.tr.mu.Unlock()
	sPost, dPost, bPost := h.server(), h.db(), h.bt.sample()
	h.r.StormServerCPU, h.r.StormDBCPU = sPost.CPU-sPre.CPU, dPost.CPU-dPre.CPU
	h.r.BrokerStormCPU = bPost.CPU - bPre.CPU
	if err != nil {
		h.note("connect storm: %d of %d devices online after %s", h.r.StormOnlineN, o.Devices, time.Since(tStorm).Round(time.Second))
		return fmt.Errorf("connect storm: %w", err)
	}
	h.progress("all online in %s, all reported in %s", h.r.StormOnline.Round(time.Millisecond), h.r.StormReported.Round(time.Millisecond))

	// Idle: keepalives only, then with heartbeats (reported-state changes).
	sleep(ctx, o.Settle)
	a, da, ba := h.server(), h.db(), h.bt.sample()
	h.progress("measuring idle for %s (keepalives only)", o.IdleWindow)
	sleep(ctx, o.IdleWindow)
	b, db, bb := h.server(), h.db(), h.bt.sample()
	if el := b.At.Sub(a.At).Seconds(); el > 0 {
		h.r.IdleCPU = (b.CPU - a.CPU).Seconds() / el
		h.r.IdleDBCPU = (db.CPU - da.CPU).Seconds() / el
		h.r.BrokerIdleCPU = (bb.CPU - ba.CPU).Seconds() / el
	}
	h.r.BrokerRSS, h.r.BrokerFDs = bb.RSS, bb.FDs
	h.r.RSSConnected, h.r.FDsConnected, h.r.DBPSS = b.RSS, b.FDs, db.RSS
	h.r.PerDeviceBytes = (b.RSS - h.r.RSSEnrolled) / int64(o.Devices)
	// A report burst: every device changes its reported state once (each
	// publishes at its next report tick, so they arrive over ReportEvery). The
	// CPU it took above idle, per report, is what a report costs.
	if ctx.Err() == nil {
		reported := func() int { h.tr.mu.Lock(); defer h.tr.mu.Unlock(); return h.tr.streamed["reported"] }
		h.progress("report burst: every device changes its reported state once")
		a, da, r0 := h.server(), h.db(), reported()
		for _, w := range h.ws {
			w.send(command{Op: "beat-all"})
		}
		err := h.waitFor(ctx, o.ReportEvery+2*time.Minute, func() bool { return reported()-r0 >= o.Devices })
		b, db, r1 := h.server(), h.db(), reported()
		el := b.At.Sub(a.At)
		h.r.BurstTime, h.r.BurstReports = el, r1-r0
		if r1 > r0 {
			extra := (b.CPU - a.CPU + db.CPU - da.CPU) - time.Duration((h.r.IdleCPU+h.r.IdleDBCPU)*float64(el))
			h.r.PerReportCPU = extra / time.Duration(r1-r0)
			h.r.BurstDBCPU = db.CPU - da.CPU
		}
		if err != nil {
			h.note("report burst: %d of %d reports stored: %v", r1-r0, o.Devices, err)
		}
		h.progress("%d reports in %s", r1-r0, el.Round(time.Millisecond))
	}
	// Idle with heartbeats: every device changes its reported state every
	// Heartbeat, spread evenly.
	if o.Heartbeat > 0 && ctx.Err() == nil {
		for _, w := range h.ws {
			w.send(command{Op: "beat-on"})
		}
		sleep(ctx, min(o.ReportEvery, o.IdleWindow)) // the first beats reach the link at its next report tick
		h.progress("measuring idle for %s with heartbeats (each device every %s)", o.IdleWindow, o.Heartbeat)
		reported := func() int { h.tr.mu.Lock(); defer h.tr.mu.Unlock(); return h.tr.streamed["reported"] }
		a, da, r0 := h.server(), h.db(), reported()
		sleep(ctx, o.IdleWindow)
		b, db, r1 := h.server(), h.db(), reported()
		if el := b.At.Sub(a.At).Seconds(); el > 0 {
			h.r.BeatCPU = (b.CPU - a.CPU).Seconds() / el
			h.r.BeatDBCPU = (db.CPU - da.CPU).Seconds() / el
			h.r.BeatRate = float64(r1-r0) / el
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}

	// Event latency: devices change their reported state; the stream shows it.
	if n := min(o.Probes, o.Devices); n > 0 {
		var probed []string
		idx := make([]int, n)
		for i := range n {
			idx[i] = i * o.Devices / n
			probed = append(probed, ids[idx[i]])
		}
		h.tr.startProbes(probed)
		freshCtx, stopFresh := context.WithCancel(ctx)
		go h.c.Follow(freshCtx, -1, h.tr.onFresh)
		time.Sleep(200 * time.Millisecond)
		h.progress("probing the event latency with %d devices", n)
		for _, i := range idx {
			for _, w := range h.ws {
				if i >= w.from && i < w.to {
					w.send(command{Op: "probe", I: i - w.from})
				}
			}
		}
		err := h.waitFor(ctx, o.ReportEvery+30*time.Second, func() bool { _, _, p, _, _ := h.tr.counts(); return p >= n })
		h.tr.mu.Lock()
		h.r.Probe = summarise(h.tr.probeLat)
		h.r.ProbeIn = summarise(h.tr.probeIn)
		h.r.ProbeFresh = summarise(h.tr.fresh)
		h.tr.mu.Unlock()
		stopFresh()
		if err != nil {
			h.note("%d of %d probes seen on the stream", h.r.Probe.N, n)
		}
		h.progress("event -> stream: %s", h.r.Probe)
	}
	if o.NoCampaign || ctx.Err() != nil {
		return ctx.Err()
	}
	return h.campaign(ctx, label, pkg)
}

// waitFor polls cond until it holds, limit passes or the server dies.
func (h *run) waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if h.srv != nil && !h.srv.alive() {
			return fmt.Errorf("tern server exited: %v (log: %s)", h.srv.exitErr, h.srv.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not done after %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
