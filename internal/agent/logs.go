package agent

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// LogLine is one line of an app's log as the monitor records it.
type LogLine struct {
	Time    time.Time `json:"time"`
	App     string    `json:"app"`
	Version string    `json:"version"`
	Stream  string    `json:"stream"`
	Line    string    `json:"line"`
	Partial bool      `json:"partial,omitempty"`
}

// logFiles lists an app's log files oldest first: current.log.N ... .1, current.log.
func logFiles(dir string) []string {
	entries, _ := os.ReadDir(dir)
	type rotated struct {
		n    int
		path string
	}
	var rs []rotated
	for _, e := range entries {
		if n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "current.log.")); err == nil && strings.HasPrefix(e.Name(), "current.log.") {
			rs = append(rs, rotated{n, filepath.Join(dir, e.Name())})
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].n > rs[j].n })
	var out []string
	for _, r := range rs {
		out = append(out, r.path)
	}
	return append(out, filepath.Join(dir, "current.log"))
}

// Logs writes an app's log records (JSON lines) to w: the last tail lines (all if
// tail < 0), then, with follow, new lines as they come until ctx ends.
func (a *Agent) Logs(ctx context.Context, name string, tail int, follow bool, w io.Writer) error {
	if _, err := a.store.App(name); err != nil {
		return err
	}
	dir := a.logDir(name)
	var lines [][]byte
	for _, f := range logFiles(dir) {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range bytes.SplitAfter(data, []byte("\n")) {
			if len(l) > 0 && l[len(l)-1] == '\n' {
				lines = append(lines, l)
			}
		}
	}
	if tail >= 0 && len(lines) > tail {
		lines = lines[len(lines)-tail:]
	}
	flush := func() {
		if f, ok := w.(interface{ Flush() }); ok {
			f.Flush()
		}
	}
	for _, l := range lines {
		if _, err := w.Write(l); err != nil {
			return err
		}
	}
	flush()
	if !follow {
		return nil
	}
	return followLog(ctx, filepath.Join(dir, "current.log"), w, flush)
}

// followLog copies what is appended to path, reopening it when the monitor rotates
// it (a new inode, or a file shorter than what was read).
func followLog(ctx context.Context, path string, w io.Writer, flush func()) error {
	var f *os.File
	var r *bufio.Reader
	var ino uint64
	var off int64
	open := func(fromEnd bool) {
		nf, err := os.Open(path)
		if err != nil {
			return
		}
		if f != nil {
			f.Close()
		}
		f, r, off = nf, bufio.NewReader(nf), 0
		if fi, err := f.Stat(); err == nil {
			ino = inodeOf(fi)
			if fromEnd {
				off, _ = f.Seek(0, io.SeekEnd)
			}
		}
	}
	open(true)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var partial []byte
	for {
		if r != nil {
			for {
				chunk, err := r.ReadBytes('\n')
				off += int64(len(chunk))
				partial = append(partial, chunk...)
				if err != nil {
					break
				}
				if _, err := w.Write(partial); err != nil {
					return err
				}
				partial = partial[:0]
			}
			flush()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		fi, err := os.Stat(path)
		if err != nil {
			continue
		}
		if f == nil || inodeOf(fi) != ino || fi.Size() < off {
			// Rotated: the rest of the old file was read above; start the new one.
			partial = partial[:0]
			open(false)
		}
	}
}

func inodeOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
