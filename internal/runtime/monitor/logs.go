package monitor

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// LogConfig says where the monitor writes a container's stdout and stderr.
//
// Each line becomes one JSON object on a line of Dir/current.log:
//
//	{"time":"<RFC 3339, ns>","app":"..","version":"..","stream":"stdout|stderr","line":".."}
//
// A line longer than MaxLineSize is split into several records, all but
// the last marked "partial":true. When current.log would grow past MaxSize
// it is renamed current.log.1 (the previous .1 becomes .2, and so on; the
// oldest beyond MaxFiles is dropped), so an app's logs never take more than
// about (MaxFiles+1)*MaxSize. Logs are not fsynced: after a crash the last
// line of current.log may be cut (readers skip lines that do not parse), a
// crash during rotation may leave no current.log (the next write creates
// it), and no record is ever in two files. While two monitors share Dir
// (two versions of an app during an update), a file may reach about twice
// MaxSize before the slower writer notices the rotation.
type LogConfig struct {
	Dir      string // created if missing
	App      string
	Version  string
	MaxSize  int64 // bytes; 0 is DefaultLogMaxSize
	MaxFiles int   // rotated files kept besides current.log; 0 is DefaultLogMaxFiles
}

// Log defaults and limits. CurrentLog is the file being written; rotated
// files are CurrentLog.1 (newest) to CurrentLog.<MaxFiles>.
const (
	DefaultLogMaxSize  = 1 << 20
	DefaultLogMaxFiles = 3
	MaxLineSize        = 16 << 10
	CurrentLog         = "current.log"
)

// logWriter appends records to current.log and rotates it. Several monitors
// may share a directory (two versions of an app during an update): rotation
// happens under an flock on Dir/.lock, and a writer whose file was rotated by
// another reopens current.log instead of rotating again.
type logWriter struct {
	mu       sync.Mutex
	dir      string
	maxSize  int64
	maxFiles int
	prefix   []byte // `","app":..,"version":..,"stream":"` minus the stream
	f        *os.File
	size     int64
	buf      []byte
}

func openLogWriter(c LogConfig) (*logWriter, error) {
	if c.Dir == "" {
		return nil, errors.New("log: no directory")
	}
	if err := os.MkdirAll(c.Dir, 0o750); err != nil {
		return nil, err
	}
	w := &logWriter{
		dir:      c.Dir,
		maxSize:  max(c.MaxSize, 0),
		maxFiles: max(c.MaxFiles, 0),
	}
	if w.maxSize == 0 {
		w.maxSize = DefaultLogMaxSize
	}
	if w.maxFiles == 0 {
		w.maxFiles = DefaultLogMaxFiles
	}
	w.prefix = append(w.prefix, `","app":`...)
	w.prefix = appendJSONString(w.prefix, []byte(c.App))
	w.prefix = append(w.prefix, `,"version":`...)
	w.prefix = appendJSONString(w.prefix, []byte(c.Version))
	w.prefix = append(w.prefix, `,"stream":"`...)
	return w, w.reopen()
}

func (w *logWriter) reopen() error {
	if w.f != nil {
		w.f.Close()
	}
	f, err := os.OpenFile(filepath.Join(w.dir, CurrentLog), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		w.f = nil
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	w.f, w.size = f, st.Size()
	return nil
}

// writeLine appends one record.
func (w *logWriter) writeLine(stream string, line []byte, partial bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	b := append(w.buf[:0], `{"time":"`...)
	b = time.Now().UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, w.prefix...)
	b = append(b, stream...)
	b = append(b, `","line":`...)
	b = appendJSONString(b, line)
	if partial {
		b = append(b, `,"partial":true`...)
	}
	b = append(b, "}\n"...)
	w.buf = b
	if w.f == nil || (w.size > 0 && w.size+int64(len(b)) > w.maxSize) {
		if err := w.rotate(); err != nil && w.f == nil {
			return err
		}
	}
	n, err := w.f.Write(b)
	w.size += int64(n)
	return err
}

// rotate shifts current.log to current.log.1 (and so on) unless another
// writer already did, then reopens current.log.
func (w *logWriter) rotate() error {
	lock, err := os.OpenFile(filepath.Join(w.dir, ".lock"), os.O_RDONLY|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	cur := filepath.Join(w.dir, CurrentLog)
	if w.f != nil {
		ours, err1 := w.f.Stat()
		onDisk, err2 := os.Stat(cur)
		if err1 == nil && err2 == nil && os.SameFile(ours, onDisk) {
			for i := w.maxFiles - 1; i >= 1; i-- {
				os.Rename(cur+"."+strconv.Itoa(i), cur+"."+strconv.Itoa(i+1))
			}
			if err := os.Rename(cur, cur+".1"); err != nil {
				return err
			}
		}
	}
	return w.reopen() // the flock goes with lock.Close
}

func (w *logWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	return w.f.Close()
}

// copyLines reads r to its end and calls emit for each line without its
// newline; a line longer than MaxLineSize is emitted in pieces (partial),
// cut between UTF-8 characters.
func copyLines(r io.Reader, emit func(line []byte, partial bool)) {
	buf := make([]byte, MaxLineSize)
	n := 0
	for {
		m, err := r.Read(buf[n:])
		n += m
		start := 0
		for {
			i := bytes.IndexByte(buf[start:n], '\n')
			if i < 0 {
				break
			}
			emit(buf[start:start+i], false)
			start += i + 1
		}
		if n-start == len(buf) {
			cut := runeBoundary(buf[start:n])
			emit(buf[start:start+cut], true)
			start += cut
		}
		n = copy(buf, buf[start:n])
		if err != nil {
			if n > 0 {
				emit(buf[:n], false)
			}
			return
		}
	}
}

// runeBoundary returns the length of b without a trailing incomplete UTF-8
// sequence (which the next piece then starts with).
func runeBoundary(b []byte) int {
	for back := 1; back <= utf8.UTFMax && back <= len(b); back++ {
		if utf8.RuneStart(b[len(b)-back]) {
			if !utf8.FullRune(b[len(b)-back:]) && back < len(b) {
				return len(b) - back
			}
			break
		}
	}
	return len(b)
}

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
// It spares the monitor encoding/json and its reflection.
func appendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029': // valid JSON, but not in JavaScript strings
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
