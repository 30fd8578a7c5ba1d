package logship

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func lines(from, n int) []Line {
	var out []Line
	for i := from; i < from+n; i++ {
		out = append(out, Line{Time: time.Unix(int64(i), 0), App: "a", Stream: "stdout", Line: fmt.Sprintf("line %d", i)})
	}
	return out
}

// drain reads and acknowledges everything, returning the lines and the dropped count.
func drain(t *testing.T, b *Buffer) ([]Line, uint64) {
	t.Helper()
	var all []Line
	var dropped uint64
	for {
		batch, ack, err := b.NextBatch(7)
		if err != nil {
			t.Fatal(err)
		}
		if len(batch.Lines) == 0 && batch.Dropped == 0 {
			return all, dropped
		}
		all = append(all, batch.Lines...)
		dropped += batch.Dropped
		if err := ack(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBufferKeepsOrderAcrossReopenAndAck(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	b.Append(lines(0, 20)...)
	batch, ack, _ := b.NextBatch(5)
	if len(batch.Lines) != 5 || batch.Lines[0].Line != "line 0" {
		t.Fatalf("first batch %+v", batch)
	}
	ack()
	// An unacknowledged batch is offered again after a restart.
	b.NextBatch(5)
	b.Close()
	b, err = Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	got, dropped := drain(t, b)
	if len(got) != 15 || got[0].Line != "line 5" || got[14].Line != "line 19" || dropped != 0 {
		t.Fatalf("after reopen: %d lines from %q, dropped %d", len(got), got[0].Line, dropped)
	}
}

func TestBufferDropsOldestWhenFullAndCountsThem(t *testing.T) {
	b, err := Open(t.TempDir(), 16<<10) // ~16 KiB: a few hundred lines
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	for i := 0; i < n; i += 100 {
		b.Append(lines(i, 100)...)
	}
	got, dropped := drain(t, b)
	if len(got) == 0 || dropped == 0 {
		t.Fatalf("kept %d, dropped %d", len(got), dropped)
	}
	if int(dropped)+len(got) != n {
		t.Fatalf("kept %d + dropped %d != %d: lines lost without being counted", len(got), dropped, n)
	}
	if last := got[len(got)-1].Line; last != fmt.Sprintf("line %d", n-1) {
		t.Fatalf("newest line kept is %q", last)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Time.Before(got[i-1].Time) {
			t.Fatal("lines out of order")
		}
	}
}

func TestTailerFollowsAppLogsThroughRotationAndRestart(t *testing.T) {
	logs := t.TempDir()
	os.MkdirAll(filepath.Join(logs, "hello"), 0o755)
	cur := filepath.Join(logs, "hello", "current.log")
	write := func(path string, from, n int) {
		f, _ := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		for i := from; i < from+n; i++ {
			l := Line{Time: time.Unix(int64(i), 0), App: "hello", Version: "1.0.0", Stream: "stdout", Line: fmt.Sprintf("line %d", i)}
			if i%2 == 0 {
				l.Line = fmt.Sprintf(`{"level":"WARN","msg":"line %d"}`, i)
			}
			data, _ := json.Marshal(l)
			f.Write(append(data, '\n'))
		}
		f.Close()
	}
	buf, _ := Open(filepath.Join(t.TempDir(), "ship"), 1<<20)
	write(cur, 0, 10)
	tl := NewTailer(logs, buf)
	tl.Scan()
	write(cur, 10, 5)
	os.Rename(cur, cur+".1") // the monitor rotates
	write(cur, 15, 5)
	tl.Scan()
	// ternd restarts: a new tailer resumes where the old one stopped.
	write(cur, 20, 3)
	NewTailer(logs, buf).Scan()
	got, _ := drain(t, buf)
	if len(got) != 23 {
		t.Fatalf("shipped %d lines, want 23", len(got))
	}
	for i, l := range got {
		want := fmt.Sprintf("line %d", i)
		if i%2 == 0 {
			want = fmt.Sprintf(`{"level":"WARN","msg":"line %d"}`, i)
			if l.Level != "warn" {
				t.Fatalf("line %d: level %q", i, l.Level)
			}
		}
		if l.Line != want || l.App != "hello" || l.Version != "1.0.0" {
			t.Fatalf("line %d: %+v", i, l)
		}
	}
}

func TestHandlerShipsAgentLogLines(t *testing.T) {
	buf, _ := Open(t.TempDir(), 1<<20)
	log := slog.New(Handler(slog.NewTextHandler(io.Discard, nil), buf)).With("app", "hello")
	log.Warn("app exited", "code", 3)
	got, _ := drain(t, buf)
	if len(got) != 1 || got[0].App != "ternd" || got[0].Level != "warn" || got[0].Line != "app exited app=hello code=3" {
		t.Fatalf("%+v", got)
	}
}
