package monitor

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// TestRecordsRoundTrip holds the monitor's hand-written encoders to what
// ternd decodes with encoding/json.
func TestRecordsRoundTrip(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6789, time.UTC)
	for _, tc := range []struct {
		rec jsonRecord
		out any
	}{
		{Record{MonitorPid: 12, MonitorStart: 34, BootID: "b\"oot", Bundle: "/x/y"}, &Record{}},
		{Record{MonitorPid: 12, MonitorStart: 34, BootID: "b", Bundle: "/x", InitPid: 56, InitStart: 78, StartedAt: at}, &Record{}},
		{ExitStatus{Code: 137, Signal: 9, OOMKilled: true, StartedAt: at, ExitedAt: at.Add(time.Second)}, &ExitStatus{}},
		{ExitStatus{Code: -1, Error: "runc create: \"exec\"\nfailed", ExitedAt: at, Lost: true}, &ExitStatus{}},
		{Report{Pid: 42}, &Report{}},
		{Report{Error: "no\tway"}, &Report{}},
	} {
		b := tc.rec.AppendJSON(nil)
		if err := json.Unmarshal(b, tc.out); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if got := reflect.ValueOf(tc.out).Elem().Interface(); !reflect.DeepEqual(got, tc.rec) {
			t.Errorf("%s decodes to %+v, want %+v", b, got, tc.rec)
		}
		if std, _ := json.Marshal(tc.rec); string(std) != string(b) {
			t.Errorf("hand-written %s, encoding/json %s", b, std)
		}
	}
}
