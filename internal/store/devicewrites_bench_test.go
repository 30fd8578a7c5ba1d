package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/tern-iot/tern/internal/link"
	"github.com/tern-iot/tern/internal/store"
)

// BenchmarkDeviceMessagesSQLite is the server's hot write path on its embedded
// database: 100 devices' reports and events arriving concurrently (64 at a
// time, as the broker hands them over), each durable (synchronous=FULL) before
// it returns.
//
//	go test -run='^$' -bench=DeviceMessagesSQLite -benchtime=5000x ./internal/store/
func BenchmarkDeviceMessagesSQLite(b *testing.B) {
	ctx := context.Background()
	s, err := store.Open(ctx, "sqlite://"+filepath.Join(b.TempDir(), "tern.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateAccount(ctx, store.Account{ID: "a1", Name: "a1", CACert: "c", CAKey: "k", DirectorKey: "d", CreatedAt: t0}); err != nil {
		b.Fatal(err)
	}
	if err := s.CreateToken(ctx, store.Token{ID: "tok", AccountID: "a1", Hash: "h-tok", Approval: store.ApprovalAuto, MaxUses: 100,
		ExpiresAt: t0.AddDate(10, 0, 0), CreatedAt: t0}); err != nil {
		b.Fatal(err)
	}
	var ids []string
	for i := range 100 {
		d, err := enroll(s, "tok", fmt.Sprintf("d%03d", i), t0)
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, d.ID)
	}
	var n atomic.Int64
	b.SetParallelism(32) // x GOMAXPROCS goroutines
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			id := ids[i%int64(len(ids))]
			var err error
			if i%2 == 0 {
				_, err = s.Report(ctx, id, []byte(fmt.Sprintf(`{"n":%d}`, i)), t0)
			} else {
				_, err = s.RecordDeviceEvent(ctx, id, link.EventMessage{Seq: uint64(i), Kind: "exit", Time: t0}, t0)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}
