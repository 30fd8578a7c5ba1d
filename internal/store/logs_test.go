package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

func TestDeviceLogsKeepOrderRecordDropsAndAreRetained(t *testing.T) {
	each(t, func(t *testing.T, s *store.Store, dsn string) {
		ctx := context.Background()
		seed(t, s, "a1")
		seed(t, s, "a2")
		token(t, s, "a1", "tok", nil)
		d, _ := enroll(s, "tok", "dev", t0)
		batch := func(from, n int, dropped uint64) link.LogBatch {
			b := link.LogBatch{Dropped: dropped}
			for i := from; i < from+n; i++ {
				b.Lines = append(b.Lines, link.LogLine{Time: t0.Add(time.Duration(i) * time.Second), App: "hello", Version: "1.0.0", Stream: "stdout", Line: fmt.Sprintf("line %d", i)})
			}
			return b
		}
		if err := s.AddLogs(ctx, d.ID, batch(0, 5, 0), t0); err != nil {
			t.Fatal(err)
		}
		if err := s.AddLogs(ctx, d.ID, batch(5, 3, 42), t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		got, err := s.Logs(ctx, "a1", d.ID, store.LogQuery{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 9 || got[0].Line != "line 0" || got[8].Line != "line 7" {
			t.Fatalf("%d lines: %+v", len(got), got)
		}
		if drop := got[5]; drop.App != "ternd" || drop.Line != "42 log lines were dropped on the device while it could not reach the server" {
			t.Fatalf("drop marker %+v", drop)
		}
		// Following: only what came after the last id; filters by app and time.
		if after, _ := s.Logs(ctx, "a1", d.ID, store.LogQuery{After: got[6].ID}); len(after) != 2 {
			t.Fatalf("after: %+v", after)
		}
		if hello, _ := s.Logs(ctx, "a1", d.ID, store.LogQuery{App: "hello", Since: t0.Add(6 * time.Second)}); len(hello) != 2 {
			t.Fatalf("filtered: %+v", hello)
		}
		// Another account sees nothing of it.
		if _, err := s.Logs(ctx, "a2", d.ID, store.LogQuery{}); err == nil {
			t.Fatal("another account read the device's logs")
		}
		// Retention: by age (the first batch is old), then by count.
		if n, err := s.PruneLogs(ctx, t0.Add(2*time.Hour), 90*time.Minute, 1000); err != nil || n != 5 {
			t.Fatalf("pruned %d by age: %v", n, err)
		}
		if n, err := s.PruneLogs(ctx, t0.Add(2*time.Hour), 24*time.Hour, 2); err != nil || n != 2 {
			t.Fatalf("pruned %d by count: %v", n, err)
		}
		if left, _ := s.Logs(ctx, "a1", d.ID, store.LogQuery{}); len(left) != 2 || left[1].Line != "line 7" {
			t.Fatalf("left: %+v", left)
		}
	})
}
