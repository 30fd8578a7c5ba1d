package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/link"
)

// BenchmarkReportToEventStream measures, in one process, the server's part of
// a device event's way to an operator: from the moment the server receives a
// device's reported state over MQTT (the event's "at") to its arrival on an
// SSE stream (/api/v1/events). The fleet simulator measures the same across
// processes (docs/fleetsim.md); this isolates the server's path.
//
//	go test -run='^$' -bench=ReportToEventStream -benchtime=50x ./internal/server/
func BenchmarkReportToEventStream(b *testing.B) {
	e := start(b)
	id := e.enroll(e.token(e.admin, nil))
	var n atomic.Int64
	e.connect(id, func(context.Context) (link.Reported, error) {
		return link.Reported{AgentVersion: "bench", Apps: json.RawMessage(`[]`), Hostname: "h" + strings.Repeat("x", int(n.Load()%64))}, nil
	})
	waitFor(b, "the first report", func() bool { d := e.device(e.admin, id.DeviceID); return d["reported"] != nil })
	req, _ := http.NewRequest("GET", e.url+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+e.admin)
	req.Header.Set("Accept", "text/event-stream")
	res, err := e.http.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer res.Body.Close()
	arrived := make(chan time.Duration, 16)
	go func() {
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			d, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev struct {
				Type string
				At   time.Time
			}
			if json.Unmarshal([]byte(d), &ev) == nil && ev.Type == "reported" {
				arrived <- time.Since(ev.At)
			}
		}
	}()
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		n.Add(1) // the device reports the change at its next tick (100 ms)
		select {
		case d := <-arrived:
			lat = append(lat, d)
		case <-time.After(10 * time.Second):
			b.Fatal("no reported event on the stream")
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-p99")
	b.ReportMetric(0, "ns/op")
}
