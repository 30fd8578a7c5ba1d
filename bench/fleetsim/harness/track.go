package harness

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// tracker follows the server's event stream (SSE) and the workers' messages: who
// is online, the campaign's progress as the server and as the devices see it, and
// the latency from a device's event to the event on the stream.
type tracker struct {
	mu   sync.Mutex
	want int             // devices in the fleet
	ours map[string]bool // their ids (a server may have other devices)

	online    map[string]bool
	reported  map[string]bool
	tOnline   time.Time // when the want-th device came online (on the stream)
	tReported time.Time

	// Probes: a probed device's reports (worker: when handed to the link) and
	// its "reported" events on the stream, matched in order.
	probing   map[string]bool
	probeSent map[string][]int64
	probeSeen map[string][]int64
	probeAt   map[string][]int64 // the server's time of each seen event
	probeLat  []time.Duration
	probeIn   []time.Duration // device -> recorded by the server
	fresh     []time.Duration // recorded -> on a second stream opened for the probes

	// The campaign: named before it is created; its id is learned from the stream.
	campName  string
	campaign  string
	desiredT0 map[string]int64 // device|state|version -> when the device decided it
	desiredT1 map[string]int64 // -> when the stream showed it
	desLat    []time.Duration
	outcome   map[string]string // device -> its final report (applied, rolled_back, rejected)
	tReach    time.Time         // when every device had reported an outcome
	phases    []phaseTimes
	ended     string // campaign.completed | campaign.paused ...
	tEnded    time.Time
	reason    string
	streamed  map[string]int // event type -> count, for the report
	lastEvent time.Time
}

type phaseTimes struct {
	Started, Completed time.Time
}

func newTracker(want int) *tracker {
	return &tracker{want: want, online: map[string]bool{}, reported: map[string]bool{}, probing: map[string]bool{},
		probeSent: map[string][]int64{}, probeSeen: map[string][]int64{}, probeAt: map[string][]int64{}, desiredT0: map[string]int64{}, desiredT1: map[string]int64{},
		outcome: map[string]string{}, streamed: map[string]int{}}
}

// event is one entry of the stream.
type event struct {
	Seq    int64           `json:"seq"`
	Type   string          `json:"type"`
	Device string          `json:"device"`
	Data   json.RawMessage `json:"data"`
	At     time.Time       `json:"at"` // when the server recorded it
}

// onStream handles one event of the stream.
func (t *tracker) onStream(raw json.RawMessage) error {
	now := time.Now()
	var e event
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streamed[e.Type]++
	t.lastEvent = now
	mine := t.ours != nil && t.ours[e.Device]
	switch {
	case e.Type == "online" && mine:
		if !t.online[e.Device] {
			t.online[e.Device] = true
			if len(t.online) == t.want {
				t.tOnline = now
			}
		}
	case e.Type == "reported" && mine:
		if !t.reported[e.Device] {
			t.reported[e.Device] = true
			if len(t.reported) == t.want {
				t.tReported = now
			}
		}
		if t.probing[e.Device] {
			t.probeSeen[e.Device] = append(t.probeSeen[e.Device], now.UnixNano())
			t.probeAt[e.Device] = append(t.probeAt[e.Device], e.At.UnixNano())
			t.matchProbe(e.Device)
		}
	case strings.HasPrefix(e.Type, "desired."):
		var d struct {
			Version  uint64 `json:"version"`
			Campaign string `json:"campaign"`
		}
		json.Unmarshal(e.Data, &d)
		if t.campaign == "" || d.Campaign != t.campaign {
			return nil
		}
		k := fmt.Sprintf("%s|%s|%d", e.Device, strings.TrimPrefix(e.Type, "desired."), d.Version)
		t.desiredT1[k] = now.UnixNano()
		t.matchDesired(k)
	case strings.HasPrefix(e.Type, "campaign."):
		var d struct {
			Campaign string `json:"campaign"`
			Name     string `json:"name"`
			Phase    int    `json:"phase"`
			Reason   string `json:"reason"`
		}
		json.Unmarshal(e.Data, &d)
		if t.campName == "" || d.Name != t.campName {
			return nil
		}
		t.campaign = d.Campaign
		for len(t.phases) < d.Phase {
			t.phases = append(t.phases, phaseTimes{})
		}
		switch e.Type {
		case "campaign.phase_started":
			if d.Phase > 0 {
				t.phases[d.Phase-1].Started = now
			}
		case "campaign.phase_completed":
			if d.Phase > 0 {
				t.phases[d.Phase-1].Completed = now
			}
		case "campaign.completed", "campaign.paused", "campaign.cancelled", "campaign.rolled_back":
			if t.ended == "" {
				t.ended, t.tEnded, t.reason = strings.TrimPrefix(e.Type, "campaign."), now, d.Reason
			}
		}
	}
	return nil
}

// onFresh handles an event of the second stream opened for the probes.
func (t *tracker) onFresh(raw json.RawMessage) error {
	now := time.Now()
	var e event
	if json.Unmarshal(raw, &e) != nil || e.Type != "reported" {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.probing[e.Device] {
		t.fresh = append(t.fresh, now.Sub(e.At))
	}
	return nil
}

// onWorker handles one message of a worker.
func (t *tracker) onWorker(m message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch m.Ev {
	case "report":
		if t.probing[m.ID] {
			t.probeSent[m.ID] = append(t.probeSent[m.ID], m.T)
			t.matchProbe(m.ID)
		}
	case "desired":
		if t.campName == "" {
			return
		}
		k := fmt.Sprintf("%s|%s|%d", m.ID, m.State, m.V)
		t.desiredT0[k] = m.T
		t.matchDesired(k)
		switch m.State {
		case "applied", "rolled_back", "rejected":
			if _, ok := t.outcome[m.ID]; !ok {
				t.outcome[m.ID] = m.State
				if len(t.outcome) == t.want {
					t.tReach = time.Now()
				}
			}
		}
	}
}

func (t *tracker) matchProbe(id string) {
	for len(t.probeSent[id]) > 0 && len(t.probeSeen[id]) > 0 {
		t0, t1, at := t.probeSent[id][0], t.probeSeen[id][0], t.probeAt[id][0]
		t.probeSent[id], t.probeSeen[id], t.probeAt[id] = t.probeSent[id][1:], t.probeSeen[id][1:], t.probeAt[id][1:]
		if t1 >= t0 {
			t.probeLat = append(t.probeLat, time.Duration(t1-t0))
			t.probeIn = append(t.probeIn, time.Duration(at-t0))
		}
	}
}

func (t *tracker) matchDesired(k string) {
	t0, ok0 := t.desiredT0[k]
	t1, ok1 := t.desiredT1[k]
	if ok0 && ok1 {
		delete(t.desiredT0, k)
		delete(t.desiredT1, k)
		if t1 >= t0 {
			t.desLat = append(t.desLat, time.Duration(t1-t0))
		}
	}
}

// startProbes marks devices as probed (their earlier reports do not count).
func (t *tracker) startProbes(ids []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		t.probing[id] = true
		t.probeSent[id], t.probeSeen[id], t.probeAt[id] = nil, nil, nil
	}
}

// counts is a snapshot for the harness's waits.
func (t *tracker) counts() (online, reported, probes, outcomes int, ended string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.online), len(t.reported), len(t.probeLat), len(t.outcome), t.ended
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Latency summarises samples.
type Latency struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

func summarise(samples []time.Duration) Latency {
	s := slices.Clone(samples)
	slices.Sort(s)
	l := Latency{N: len(s), P50: percentile(s, 50), P99: percentile(s, 99)}
	if len(s) > 0 {
		l.Max = s[len(s)-1]
	}
	return l
}

func (l Latency) String() string {
	if l.N == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s, p99 %s, max %s (%d samples)", ms(l.P50), ms(l.P99), ms(l.Max), l.N)
}

func ms(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	case d < 10*time.Second:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
}
