package harness

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tern-iot/tern/bench/fleetsim"
	"github.com/tern-iot/tern/internal/link"
)

// A worker holds a share of the simulated devices: in the harness's process or in
// a process of its own (a process holds at most ~19,900 descriptors here, and
// each device needs one for MQTT and, while it downloads, one for HTTPS). The
// harness and a worker talk in JSON lines: the harness sends a WorkerConfig, then
// commands; the worker answers with messages. Closing its input stops it.

// WorkerConfig is the first line a worker reads.
type WorkerConfig struct {
	Dirs         []string      `json:"dirs"`  // the devices' identity directories (provisioned)
	First        int           `json:"first"` // the fleet index of Dirs[0] (for an exact failing share)
	KeepAlive    uint16        `json:"keepalive"`
	ReportEvery  time.Duration `json:"report_every"`
	Heartbeat    time.Duration `json:"heartbeat"`
	DownloadTime time.Duration `json:"download_time"`
	FailRate     float64       `json:"fail_rate"`
	CloseIdle    bool          `json:"close_idle"`
	// Brokers, if set, are the MQTT URLs devices connect to: fleet index i uses
	// Brokers[i % len(Brokers)].
	Brokers []string `json:"brokers,omitempty"`
	Log     bool     `json:"log"` // the devices' warnings to stderr (a worker process's log)
}

// command is a line from the harness to a worker.
type command struct {
	Op   string  `json:"op"`             // "start" | "probe" | "beat-on" | "beat-off" | "beat-all"
	I    int     `json:"i,omitempty"`    // probe: the device's index in Dirs
	Rate float64 `json:"rate,omitempty"` // start: devices per second (0: all at once)
}

// message is a line from a worker to the harness.
type message struct {
	Ev    string `json:"ev"` // "ready" | "started" | "desired" | "report" | "error"
	ID    string `json:"id,omitempty"`
	State string `json:"state,omitempty"`
	V     uint64 `json:"v,omitempty"`
	T     int64  `json:"t,omitempty"` // Unix nanoseconds (one clock for every process on the machine)
	N     int    `json:"n,omitempty"`
	Msg   string `json:"msg,omitempty"`
}

// Worker runs a worker: it loads the devices named by the first line of in,
// then follows commands until in ends, writing messages to out.
func Worker(ctx context.Context, in io.Reader, out io.Writer) error {
	rd := bufio.NewReader(in)
	line, err := rd.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("worker config: %w", err)
	}
	var cfg WorkerConfig
	if err := json.Unmarshal(line, &cfg); err != nil {
		return fmt.Errorf("worker config: %w", err)
	}
	w := newLineWriter(out)
	defer w.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	devs := make([]*fleetsim.Device, len(cfg.Dirs))
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(devs) {
					return
				}
				d, err := newDevice(ctx, cfg, cfg.First+i, cfg.Dirs[i], w)
				if err != nil {
					select {
					case errs <- fmt.Errorf("%s: %w", cfg.Dirs[i], err):
					default:
					}
					return
				}
				devs[i] = d
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		w.send(message{Ev: "error", Msg: err.Error()})
		return err
	default:
	}
	w.send(message{Ev: "ready", N: len(devs)})

	var running sync.WaitGroup
	defer running.Wait()
	defer cancel() // runs first: the devices say goodbye and stop
	var beating atomic.Bool
	if cfg.Heartbeat > 0 && len(devs) > 0 {
		go heartbeats(ctx, devs, cfg.Heartbeat, &beating)
	}
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var c command
		if err := json.Unmarshal(line, &c); err != nil {
			return fmt.Errorf("worker command: %w", err)
		}
		switch c.Op {
		case "start":
			go func() {
				var gap time.Duration
				if c.Rate > 0 {
					gap = time.Duration(float64(time.Second) / c.Rate)
				}
				for _, d := range devs {
					running.Add(1)
					go func() { defer running.Done(); d.Run(ctx) }()
					if gap > 0 {
						select {
						case <-ctx.Done():
							return
						case <-time.After(gap):
						}
					}
				}
				w.send(message{Ev: "started", N: len(devs)})
			}()
		case "probe":
			if c.I >= 0 && c.I < len(devs) {
				devs[c.I].Beat()
			}
		case "beat-on", "beat-off":
			beating.Store(c.Op == "beat-on")
		case "beat-all":
			for _, d := range devs {
				d.Beat()
			}
		default:
			return fmt.Errorf("worker: unknown command %q", c.Op)
		}
	}
}

// heartbeats makes each device beat (change its reported state) once per every,
// spread evenly over the period, while on is set.
func heartbeats(ctx context.Context, devs []*fleetsim.Device, every time.Duration, on *atomic.Bool) {
	order := mrand.Perm(len(devs))
	t := time.NewTicker(max(every/time.Duration(len(devs)), time.Millisecond))
	defer t.Stop()
	per := max(1, int(time.Millisecond*time.Duration(len(devs))/every)) // beats per tick when the tick is floored at 1 ms
	for i := 0; ; {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !on.Load() {
			continue
		}
		for range per {
			devs[order[i%len(order)]].Beat()
			i++
		}
	}
}

func newDevice(ctx context.Context, cfg WorkerConfig, index int, dir string, w *lineWriter) (*fleetsim.Device, error) {
	var id string
	dc := fleetsim.Config{Dir: dir, ReportEvery: cfg.ReportEvery, KeepAlive: cfg.KeepAlive,
		DownloadTime: cfg.DownloadTime, InMemory: true, CloseIdle: cfg.CloseIdle,
		OnEvent: func(e link.EventMessage) {
			if e.Kind == link.EventDesired {
				w.send(message{Ev: "desired", ID: id, State: e.State, V: e.DesiredVersion, T: e.Time.UnixNano()})
			}
		},
		OnReport: func(_ uint64, at time.Time) { w.send(message{Ev: "report", ID: id, T: at.UnixNano()}) },
	}
	if len(cfg.Brokers) > 0 {
		dc.MQTTURL = cfg.Brokers[index%len(cfg.Brokers)]
	}
	if cfg.Log {
		dc.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if cfg.FailRate > 0 {
		dc.Fail = func(doc *link.Desired) string {
			if fails(index, doc.Release, cfg.FailRate) {
				return "simulated failure: health check failed"
			}
			return ""
		}
	}
	d, err := fleetsim.New(ctx, dc)
	if err != nil {
		return nil, err
	}
	id = d.ID()
	return d, nil
}

// fails decides, the same way every time, whether release fails on the device
// at index in the fleet. The failing devices are spread evenly over the indexes,
// from an offset that depends on the release, so that any run of n devices holds
// n*rate failures, rounded down or up: a fleet of 50 at 10% always has 5 (a
// random draw per device would give none one run in 200).
func fails(index int, release string, rate float64) bool {
	sum := sha256.Sum256([]byte(release))
	j := float64(index) + float64(binary.BigEndian.Uint32(sum[:4])%(1<<20))
	return math.Floor((j+1)*rate) > math.Floor(j*rate)
}

// lineWriter writes messages as JSON lines from one goroutine, flushing when it
// has nothing more to write.
type lineWriter struct {
	ch   chan message
	done chan struct{}
}

func newLineWriter(out io.Writer) *lineWriter {
	w := &lineWriter{ch: make(chan message, 4096), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		bw := bufio.NewWriterSize(out, 64<<10)
		enc := json.NewEncoder(bw)
		for m := range w.ch {
			enc.Encode(m)
			if len(w.ch) == 0 {
				bw.Flush()
			}
		}
		bw.Flush()
	}()
	return w
}

func (w *lineWriter) send(m message) {
	defer func() { recover() }() // a device may report after the worker closed
	w.ch <- m
}

func (w *lineWriter) close() {
	close(w.ch)
	<-w.done
}

// worker is the harness's handle on one worker.
type worker struct {
	from, to int // the devices' indexes in the fleet
	in       io.WriteCloser
	mu       sync.Mutex
	cmd      *exec.Cmd // nil for a worker in this process
	done     chan error
	ready    chan error
}

func (w *worker) send(c command) error {
	data, _ := json.Marshal(c)
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.in.Write(append(data, '\n'))
	return err
}

// pid is the worker's process (this one for a worker in this process).
func (w *worker) pid() int {
	if w.cmd != nil && w.cmd.Process != nil {
		return w.cmd.Process.Pid
	}
	return os.Getpid()
}

// stop closes the worker's input and waits for it to end (or kills it).
func (w *worker) stop(grace time.Duration) {
	w.in.Close()
	select {
	case <-w.done:
	case <-time.After(grace):
		if w.cmd != nil && w.cmd.Process != nil {
			w.cmd.Process.Kill()
			<-w.done
		}
	}
}

// startWorker starts a worker for devices [from,to) and hands each message it
// sends to handle. exe, if set, runs it as a process (exe args... with the
// protocol on its stdin and stdout, stderr to logPath); otherwise it runs here.
func startWorker(ctx context.Context, cfg WorkerConfig, from, to int, exe []string, logPath string, handle func(message)) (*worker, error) {
	w := &worker{from: from, to: to, done: make(chan error, 1), ready: make(chan error, 1)}
	var out io.Reader
	if len(exe) > 0 {
		cmd := exec.Command(exe[0], exe[1:]...)
		logf, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		cmd.Stderr = logf
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		w.cmd, w.in, out = cmd, in, stdout
		go func() {
			err := cmd.Wait()
			logf.Close()
			w.done <- err
		}()
	} else {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		w.in, out = inW, outR
		go func() {
			err := Worker(ctx, inR, outW)
			outW.Close()
			inR.Close()
			w.done <- err
		}()
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var m message
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			switch m.Ev {
			case "ready":
				w.ready <- nil
			case "error":
				select {
				case w.ready <- errors.New(m.Msg):
				default:
				}
			}
			handle(m)
		}
		select {
		case w.ready <- fmt.Errorf("worker for devices %d-%d ended (see %s)", from, to-1, filepath.Base(logPath)):
		default:
		}
	}()
	data, _ := json.Marshal(cfg)
	if _, err := w.in.Write(append(data, '\n')); err != nil {
		return nil, err
	}
	return w, nil
}
