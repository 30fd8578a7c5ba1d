// Package logship ships a device's logs to its server: it tails each app's log and
// ternd's own, tags every line, and keeps them in a bounded on-disk buffer that
// the link drains in batches as the server acknowledges them. While the device is
// offline the buffer fills; when it is full the oldest lines are dropped and
// counted, and the count travels with the next batch.
package logship

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/tern-iot/tern/internal/link"
)

// Line is one tagged log line, as it travels to the server.
type Line = link.LogLine

// Buffer is the on-disk queue of lines waiting for the server: segment files of
// JSON lines (seg-<n>.ndjson), at most MaxBytes in all.
//
// Invariant after a crash at any point: every line is in exactly one segment or
// was acknowledged; the cursor file names the first unacknowledged line (segment
// and offset) and is replaced whole; the dropped counter is in the cursor file
// too, so a crash never loses the count of what was dropped.
type Buffer struct {
	dir      string
	maxBytes int64
	segBytes int64

	mu      sync.Mutex
	cur     cursor
	writeF  *os.File
	writeN  int64 // bytes in the segment being written
	total   int64 // bytes in all segments
	notify  chan struct{}
	pending int // lines handed out by Next and not yet acked
}

type cursor struct {
	Seg     int    `json:"seg"`     // first segment with unacknowledged lines
	Off     int64  `json:"off"`     // offset of the first unacknowledged line in it
	Dropped uint64 `json:"dropped"` // lines dropped since the last acknowledged batch
}

// Open opens (or creates) a buffer in dir holding at most maxBytes.
func Open(dir string, maxBytes int64) (*Buffer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	b := &Buffer{dir: dir, maxBytes: maxBytes, segBytes: max(maxBytes/8, 4<<10), notify: make(chan struct{}, 1)}
	data, err := os.ReadFile(filepath.Join(dir, "cursor.json"))
	if err == nil {
		if err := json.Unmarshal(data, &b.cur); err != nil {
			return nil, fmt.Errorf("log buffer cursor: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, s := range b.segments() {
		if fi, err := os.Stat(b.segPath(s)); err == nil {
			b.total += fi.Size()
		}
	}
	if segs := b.segments(); len(segs) > 0 && b.cur.Seg < segs[0] {
		b.cur = cursor{Seg: segs[0], Dropped: b.cur.Dropped}
	}
	return b, nil
}

func (b *Buffer) segPath(n int) string {
	return filepath.Join(b.dir, fmt.Sprintf("seg-%08d.ndjson", n))
}

// segments lists segment numbers, oldest first.
func (b *Buffer) segments() []int {
	entries, _ := os.ReadDir(b.dir)
	var out []int
	for _, e := range entries {
		if n, ok := strings.CutPrefix(e.Name(), "seg-"); ok {
			if v, err := strconv.Atoi(strings.TrimSuffix(n, ".ndjson")); err == nil {
				out = append(out, v)
			}
		}
	}
	sort.Ints(out)
	return out
}

// Ready receives when lines are appended.
func (b *Buffer) Ready() <-chan struct{} { return b.notify }

// Append adds lines, dropping the oldest segments (and counting their lines) when
// the buffer would exceed its size.
func (b *Buffer) Append(lines ...Line) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range lines {
		data, err := json.Marshal(l)
		if err != nil {
			continue
		}
		data = append(data, '\n')
		if b.writeF == nil || b.writeN+int64(len(data)) > b.segBytes {
			if err := b.rollLocked(); err != nil {
				return err
			}
		}
		for b.total+int64(len(data)) > b.maxBytes && b.dropOldestLocked() {
		}
		n, err := b.writeF.Write(data)
		b.writeN += int64(n)
		b.total += int64(n)
		if err != nil {
			return err
		}
	}
	select {
	case b.notify <- struct{}{}:
	default:
	}
	return nil
}

// rollLocked starts a new segment.
func (b *Buffer) rollLocked() error {
	if b.writeF != nil {
		b.writeF.Close()
	}
	next := 1
	if segs := b.segments(); len(segs) > 0 {
		next = segs[len(segs)-1] + 1
	}
	f, err := os.OpenFile(b.segPath(next), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	b.writeF, b.writeN = f, 0
	return nil
}

// dropOldestLocked deletes the oldest segment that is not being written, counting
// the lines of it not yet acknowledged. It reports whether it dropped one.
func (b *Buffer) dropOldestLocked() bool {
	segs := b.segments()
	if len(segs) < 2 {
		return false // only the segment being written: let it grow past the bound
	}
	s := segs[0]
	data, _ := os.ReadFile(b.segPath(s))
	skip := int64(0)
	if s == b.cur.Seg {
		skip = b.cur.Off
	}
	if s >= b.cur.Seg && skip < int64(len(data)) {
		b.cur.Dropped += uint64(bytes.Count(data[skip:], []byte{'\n'}))
	}
	os.Remove(b.segPath(s))
	b.total -= int64(len(data))
	if b.cur.Seg <= s {
		b.cur = cursor{Seg: segs[1], Dropped: b.cur.Dropped}
	}
	b.saveCursorLocked()
	return true
}

func (b *Buffer) saveCursorLocked() error {
	data, _ := json.Marshal(b.cur)
	tmp := filepath.Join(b.dir, "cursor.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(b.dir, "cursor.json"))
}

// Batch is lines to send, with the count of lines dropped before them.
type Batch struct {
	link.LogBatch
	end cursor
}

// Next returns up to max lines (and the dropped count) from the cursor, without
// moving it: Ack does, once the server has them. It returns an empty batch when
// there is nothing to send.
func (b *Buffer) Next(maxLines int) (Batch, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	batch := Batch{LogBatch: link.LogBatch{Dropped: b.cur.Dropped}, end: b.cur}
	for _, s := range b.segments() {
		if s < b.cur.Seg {
			continue
		}
		f, err := os.Open(b.segPath(s))
		if err != nil {
			continue
		}
		off := int64(0)
		if s == b.cur.Seg {
			off = b.cur.Off
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			return batch, err
		}
		r := bufio.NewReaderSize(f, 64<<10)
		for len(batch.Lines) < maxLines {
			raw, err := r.ReadBytes('\n')
			if err != nil {
				break // end of segment (a last partial line waits for its end)
			}
			off += int64(len(raw))
			var l Line
			if json.Unmarshal(raw, &l) == nil {
				batch.Lines = append(batch.Lines, l)
			}
			batch.end = cursor{Seg: s, Off: off}
		}
		f.Close()
		if len(batch.Lines) >= maxLines {
			break
		}
	}
	return batch, nil
}

// Ack moves the cursor past a batch the server acknowledged, resets the dropped
// count it carried, and deletes fully sent segments.
func (b *Buffer) Ack(batch Batch) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if batch.end.Seg < b.cur.Seg || (batch.end.Seg == b.cur.Seg && batch.end.Off < b.cur.Off) {
		return nil // the segment was dropped meanwhile: the cursor is already past
	}
	b.cur.Seg, b.cur.Off = batch.end.Seg, batch.end.Off
	b.cur.Dropped -= min(b.cur.Dropped, batch.Dropped)
	for _, s := range b.segments() {
		if s >= b.cur.Seg {
			break
		}
		if fi, err := os.Stat(b.segPath(s)); err == nil {
			b.total -= fi.Size()
		}
		os.Remove(b.segPath(s))
	}
	return b.saveCursorLocked()
}

// Close closes the segment being written.
func (b *Buffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.writeF != nil {
		return b.writeF.Close()
	}
	return nil
}

// NextBatch implements link.LogSource: the next batch and the function that
// acknowledges it.
func (b *Buffer) NextBatch(maxLines int) (link.LogBatch, func() error, error) {
	batch, err := b.Next(maxLines)
	if err != nil {
		return link.LogBatch{}, nil, err
	}
	return batch.LogBatch, func() error { return b.Ack(batch) }, nil
}
