package monitor

import (
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// A container's state directory (Config.StateDir) holds the files below.
// The monitor writes Record and ExitStatus; ternd only reads them, so a
// ternd restart loses nothing. Each record is replaced whole (written to a
// temporary file, renamed over): whatever process crashes, readers see a
// record absent or complete, and ignore the ".*.tmp-*" leftovers, which
// removing the directory deletes. Only exit.json is also fsynced, because
// only it must survive power loss (see Record for why monitor.json need
// not).
const (
	RecordFile  = "monitor.json" // Record
	ExitFile    = "exit.json"    // ExitStatus
	RuncLogFile = "runc.log"     // runc's own log (--log), for diagnosis
	LogFile     = "monitor.log"  // the monitor's stderr, for diagnosis
	initPidFile = "init.pid"     // runc run --pid-file
)

// Record is monitor.json. The monitor writes it twice: first thing after it
// starts (InitPid 0: starting), then once the container runs. After a crash
// it is absent (the monitor never ran: the container is stopped), or it
// names processes by pid, start time and boot id, so that pids reused after
// the monitor died, or after a reboot, are never mistaken for it. It is not
// fsynced: after power loss it may also be empty or cut, which readers take
// as absent; either way it would name processes of a boot that is over,
// which are stopped.
type Record struct {
	MonitorPid   int       `json:"monitor_pid"`
	MonitorStart uint64    `json:"monitor_start"` // starttime field of /proc/PID/stat
	BootID       string    `json:"boot_id"`
	Bundle       string    `json:"bundle"`
	InitPid      int       `json:"init_pid,omitempty"`
	InitStart    uint64    `json:"init_start,omitempty"`
	StartedAt    time.Time `json:"started_at,omitzero"`
}

// ExitStatus is how a container ended. The monitor records it in exit.json
// just before it exits, after the container's init was reaped and runc's
// state deleted. After a crash exit.json is absent or complete; when it is
// absent and the monitor is gone, readers report the status as Lost.
type ExitStatus struct {
	Code      int       `json:"code"`             // exit code; 128+signal when killed; -1 when unknown
	Signal    int       `json:"signal,omitempty"` // the signal that killed the init, 0 if it exited
	OOMKilled bool      `json:"oom_killed"`       // the kernel's OOM killer killed a process of the container
	StartedAt time.Time `json:"started_at,omitzero"`
	ExitedAt  time.Time `json:"exited_at,omitzero"`
	// Error is set when the container never ran: runc's message.
	Error string `json:"error,omitempty"`
	// Lost is set when the monitor died before recording the exit (killed,
	// power loss, reboot): the exit code is unknown.
	Lost bool `json:"lost,omitempty"`
}

// Report is the one line the monitor writes on its sync descriptor to the
// ternd that started it: the container's init pid once it runs, or why it
// could not start.
type Report struct {
	Pid   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// WriteFileAtomic replaces path with data so that, after a crash of any
// process, path holds either its old content or data, never a mix. With
// durable, it also survives power loss (fsync of the file, then of the
// directory); without, the file is only as durable as the page cache.
func WriteFileAtomic(path string, data []byte, perm os.FileMode, durable bool) error {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if !durable {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// jsonRecord is a record that encodes itself.
type jsonRecord interface{ AppendJSON([]byte) []byte }

// WriteRecord writes a record with WriteFileAtomic.
func WriteRecord(path string, r jsonRecord, durable bool) error {
	return WriteFileAtomic(path, append(r.AppendJSON(nil), '\n'), 0o644, durable)
}

// The AppendJSON methods encode records by hand, exactly as encoding/json
// would (TestRecordsRoundTrip holds them to it), so that the monitor does
// without encoding/json and reflection. Readers use encoding/json.

// AppendJSON appends r as JSON.
func (r Record) AppendJSON(b []byte) []byte {
	b = appendInt(append(b, `{"monitor_pid":`...), r.MonitorPid)
	b = strconv.AppendUint(append(b, `,"monitor_start":`...), r.MonitorStart, 10)
	b = appendJSONString(append(b, `,"boot_id":`...), []byte(r.BootID))
	b = appendJSONString(append(b, `,"bundle":`...), []byte(r.Bundle))
	if r.InitPid != 0 {
		b = appendInt(append(b, `,"init_pid":`...), r.InitPid)
	}
	if r.InitStart != 0 {
		b = strconv.AppendUint(append(b, `,"init_start":`...), r.InitStart, 10)
	}
	b = appendTime(b, "started_at", r.StartedAt)
	return append(b, '}')
}

// AppendJSON appends e as JSON.
func (e ExitStatus) AppendJSON(b []byte) []byte {
	b = appendInt(append(b, `{"code":`...), e.Code)
	if e.Signal != 0 {
		b = appendInt(append(b, `,"signal":`...), e.Signal)
	}
	b = strconv.AppendBool(append(b, `,"oom_killed":`...), e.OOMKilled)
	b = appendTime(b, "started_at", e.StartedAt)
	b = appendTime(b, "exited_at", e.ExitedAt)
	if e.Error != "" {
		b = appendJSONString(append(b, `,"error":`...), []byte(e.Error))
	}
	if e.Lost {
		b = append(b, `,"lost":true`...)
	}
	return append(b, '}')
}

// AppendJSON appends r as JSON.
func (r Report) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	if r.Pid != 0 {
		b = appendInt(append(b, `"pid":`...), r.Pid)
	}
	if r.Error != "" {
		if r.Pid != 0 {
			b = append(b, ',')
		}
		b = appendJSONString(append(b, `"error":`...), []byte(r.Error))
	}
	return append(b, '}')
}

func appendInt(b []byte, n int) []byte { return strconv.AppendInt(b, int64(n), 10) }

func appendTime(b []byte, key string, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	b = append(append(append(b, `,"`...), key...), `":"`...)
	return append(t.AppendFormat(b, time.RFC3339Nano), '"')
}
