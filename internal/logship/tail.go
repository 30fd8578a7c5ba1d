package logship

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Tailer follows every app's log under logsDir (logs/<app>/current.log, rotated to
// current.log.1 ...) into the buffer, remembering how far it read in each, so a
// restart of ternd neither repeats nor skips lines (unless rotation removed them
// first).
type Tailer struct {
	logsDir string
	buf     *Buffer
	posFile string
	pos     map[string]position // app -> where its reading stopped
}

type position struct {
	Ino uint64 `json:"ino"`
	Off int64  `json:"off"`
}

// NewTailer follows the app logs under logsDir into buf.
func NewTailer(logsDir string, buf *Buffer) *Tailer {
	t := &Tailer{logsDir: logsDir, buf: buf, posFile: filepath.Join(buf.dir, "tails.json"), pos: map[string]position{}}
	if data, err := os.ReadFile(t.posFile); err == nil {
		json.Unmarshal(data, &t.pos)
	}
	return t
}

// Run follows the logs until ctx ends, polling every interval.
func (t *Tailer) Run(ctx context.Context, interval time.Duration) {
	for {
		t.Scan()
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// Scan reads what each app's log gained since the last scan.
func (t *Tailer) Scan() {
	apps, _ := os.ReadDir(t.logsDir)
	changed := false
	for _, a := range apps {
		if a.IsDir() && t.scanApp(a.Name()) {
			changed = true
		}
	}
	if changed {
		data, _ := json.Marshal(t.pos)
		tmp := t.posFile + ".tmp"
		if os.WriteFile(tmp, data, 0o600) == nil {
			os.Rename(tmp, t.posFile)
		}
	}
}

func (t *Tailer) scanApp(app string) bool {
	dir := filepath.Join(t.logsDir, app)
	cur := filepath.Join(dir, "current.log")
	fi, err := os.Stat(cur)
	if err != nil {
		return false
	}
	ino := fi.Sys().(*syscall.Stat_t).Ino
	p, known := t.pos[app]
	if known && p.Ino != ino {
		// Rotated since: finish the old file (now current.log.N) first.
		for n := 1; n <= 9; n++ {
			old := filepath.Join(dir, "current.log."+string(rune('0'+n)))
			if ofi, err := os.Stat(old); err == nil && ofi.Sys().(*syscall.Stat_t).Ino == p.Ino {
				t.readFrom(old, p.Off)
				break
			}
		}
		p = position{Ino: ino}
	} else if !known {
		p = position{Ino: ino}
	}
	if fi.Size() < p.Off {
		p.Off = 0 // truncated
	}
	if fi.Size() > p.Off {
		p.Off = t.readFrom(cur, p.Off)
	}
	changed := p != t.pos[app]
	t.pos[app] = p
	return changed
}

// readFrom appends the complete lines of path after off and returns the offset
// after the last complete line.
func (t *Tailer) readFrom(path string, off int64) int64 {
	f, err := os.Open(path)
	if err != nil {
		return off
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return off
	}
	r := bufio.NewReaderSize(f, 64<<10)
	var lines []Line
	for {
		raw, err := r.ReadBytes('\n')
		if err != nil {
			break
		}
		off += int64(len(raw))
		var l Line
		if json.Unmarshal(raw, &l) != nil {
			continue // a line cut by a crash
		}
		l.Level = levelOf(l.Line)
		lines = append(lines, l)
		if len(lines) == 256 {
			t.buf.Append(lines...)
			lines = lines[:0]
		}
	}
	if len(lines) > 0 {
		t.buf.Append(lines...)
	}
	return off
}

// levelOf finds the level of a line an app logged as JSON (level, lvl or severity).
func levelOf(line string) string {
	if !strings.HasPrefix(strings.TrimSpace(line), "{") {
		return ""
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		return ""
	}
	for _, k := range []string{"level", "lvl", "severity"} {
		if v, ok := m[k].(string); ok {
			return strings.ToLower(v)
		}
	}
	return ""
}
