package monitor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"
)

type logRecord struct {
	Time    string `json:"time"`
	App     string `json:"app"`
	Version string `json:"version"`
	Stream  string `json:"stream"`
	Line    string `json:"line"`
	Partial bool   `json:"partial"`
}

// readLogs reads a log directory, oldest file first; it fails the test on
// a line that is not JSON.
func readLogs(t *testing.T, dir string) []logRecord {
	t.Helper()
	var out []logRecord
	for i := 10; i >= 0; i-- {
		f := filepath.Join(dir, CurrentLog)
		if i > 0 {
			f += "." + strconv.Itoa(i)
		}
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			var r logRecord
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("%s: %v: %q", f, err, sc.Text())
			}
			out = append(out, r)
		}
	}
	return out
}

func TestLogsSplitLongLines(t *testing.T) {
	long := strings.Repeat("a", MaxLineSize-1) + "é" + strings.Repeat("b", 100) // é straddles the cut
	input := "short\n" + long + "\nno newline at end"
	var got []string
	var partial []bool
	copyLines(iotest.HalfReader(strings.NewReader(input)), func(line []byte, p bool) {
		got = append(got, string(line))
		partial = append(partial, p)
	})
	want := []string{"short", strings.Repeat("a", MaxLineSize-1), "é" + strings.Repeat("b", 100), "no newline at end"}
	if len(got) != len(want) {
		t.Fatalf("%d pieces, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] || partial[i] != (i == 1) {
			t.Errorf("piece %d: %d bytes partial=%v, want %d bytes partial=%v", i, len(got[i]), partial[i], len(want[i]), i == 1)
		}
	}
}

func TestLogRecordsAreValidJSON(t *testing.T) {
	dir := t.TempDir()
	w, err := openLogWriter(LogConfig{Dir: dir, App: `we"ird\app`, Version: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	lines := map[string]string{ // written: read back
		"plain":                       "plain",
		"quote \" backslash \\ tab\t": "quote \" backslash \\ tab\t",
		"ctl \x00\x01\x1b":            "ctl \x00\x01\x1b",
		"bad utf8 \xff\xfe":           "bad utf8 \ufffd\ufffd",
		"separators \u2028\u2029":     "separators \u2028\u2029",
		"ünïcødé ✓":                   "ünïcødé ✓",
	}
	var order []string
	for in := range lines {
		order = append(order, in)
		if err := w.writeLine("stdout", []byte(in), false); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	recs := readLogs(t, dir) // fails on any line that is not JSON
	for i, in := range order {
		if recs[i].Line != lines[in] || recs[i].App != `we"ird\app` || !utf8.ValidString(recs[i].Line) {
			t.Errorf("record %d: %+v, want line %q", i, recs[i], lines[in])
		}
	}
}

// TestLogRotationSharedByTwoWriters: two monitors on one log directory (two
// versions of an app during an update) lose and duplicate no line.
func TestLogRotationSharedByTwoWriters(t *testing.T) {
	dir := t.TempDir()
	cfg := LogConfig{Dir: dir, App: "a", Version: "1", MaxSize: 1024, MaxFiles: 3}
	w1, err := openLogWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := openLogWriter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		w := []*logWriter{w1, w2}[i%2]
		if err := w.writeLine("stdout", fmt.Appendf(nil, "line %03d", i), false); err != nil {
			t.Fatal(err)
		}
	}
	w1.Close()
	w2.Close()
	seen := map[string]bool{}
	for _, r := range readLogs(t, dir) {
		if seen[r.Line] {
			t.Errorf("%q logged twice", r.Line)
		}
		seen[r.Line] = true
	}
	if !seen["line 199"] || !seen["line 198"] {
		t.Error("the newest lines are missing")
	}
	for i := 1; i <= 3; i++ {
		info, err := os.Stat(filepath.Join(dir, fmt.Sprintf("current.log.%d", i)))
		if err != nil || info.Size() > 2*1024 {
			t.Errorf("current.log.%d: %v, %v", i, info, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "current.log.4")); err == nil {
		t.Error("more rotated files than MaxFiles")
	}
}
