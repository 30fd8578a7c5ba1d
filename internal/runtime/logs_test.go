package runtime

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestLogsAreTimestampedAndRotated(t *testing.T) {
	rt, _ := newRuntime(t)
	logDir := t.TempDir()
	log := LogConfig{Dir: logDir, App: "hello", Version: "1.2.0", MaxSize: 4096, MaxFiles: 2}

	// Both streams are tagged. (Their relative order is not kept: each is a
	// pipe of its own.)
	s := baseSpec(t, "/bin/sh", "-c", `echo to-stdout; echo to-stderr >&2`)
	start(t, rt, s, log)
	if es, err := rt.Wait(testContext(t), s.ID); err != nil || es.Code != 0 {
		t.Fatalf("wait: %+v, %v", es, err)
	}
	streams := map[string]string{}
	for _, r := range readLogs(t, logDir) {
		streams[r.Line] = r.Stream
	}
	if streams["to-stdout"] != "stdout" || streams["to-stderr"] != "stderr" {
		t.Errorf("streams: %v", streams)
	}

	// A run that logs far more than MaxFiles+1 files hold.
	const maxSize, maxFiles, n = 4096, 2, 600
	s = baseSpec(t, "/bin/sh", "-c", fmt.Sprintf(
		`i=0; while [ $i -lt %d ]; do echo "out $i"; i=$((i+1)); done`, n))
	before := time.Now()
	start(t, rt, s, log)
	if es, err := rt.Wait(testContext(t), s.ID); err != nil || es.Code != 0 {
		t.Fatalf("wait: %+v, %v", es, err)
	}
	after := time.Now()

	entries, err := os.ReadDir(logDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
		if info, _ := e.Info(); info.Size() > maxSize {
			t.Errorf("%s holds %d bytes, more than the maximum %d", e.Name(), info.Size(), maxSize)
		}
	}
	if got := strings.Join(names, " "); got != "current.log current.log.1 current.log.2" {
		t.Errorf("log files %q, want current.log and 2 rotated files", got)
	}

	recs := readLogs(t, logDir)
	if len(recs) == 0 || len(recs) >= n {
		t.Fatalf("%d records: rotation should have dropped the oldest of %d", len(recs), n)
	}
	var last time.Time
	next := -1
	for i, r := range recs {
		if r.App != "hello" || r.Version != "1.2.0" || r.Stream != "stdout" {
			t.Fatalf("record %d: %+v", i, r)
		}
		if r.Time.Before(before) || r.Time.After(after) || r.Time.Before(last) {
			t.Fatalf("record %d: time %v out of order or outside [%v, %v]", i, r.Time, before, after)
		}
		last = r.Time
		var k int
		if _, err := fmt.Sscanf(r.Line, "out %d", &k); err != nil {
			t.Fatalf("record %d: line %q", i, r.Line)
		}
		if next >= 0 && k != next {
			t.Fatalf("record %d: line %d follows %d: lines lost or reordered", i, k, next-1)
		}
		next = k + 1
	}
	if next != n {
		t.Errorf("the newest line is %d, want %d", next-1, n-1)
	}
}
