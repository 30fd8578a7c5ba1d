package peers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"
)

// StartSample is one timed start: from the moment the runner's Start was called
// until it returned, and until the app first answered GET / on its port.
type StartSample struct {
	Returned time.Duration
	Answered time.Duration
}

// StartResult holds one runner's samples.
type StartResult struct {
	Name    string
	Samples []StartSample
}

// Answered returns the samples' times to answer.
func (r StartResult) Answered() []time.Duration {
	var out []time.Duration
	for _, s := range r.Samples {
		out = append(out, s.Answered)
	}
	return out
}

// Returned returns the samples' times until Start returned.
func (r StartResult) Returned() []time.Duration {
	var out []time.Duration
	for _, s := range r.Samples {
		out = append(out, s.Returned)
	}
	return out
}

// MeasureStart starts and stops one instance per runner, rounds times, in a
// shuffled order each round so that a slow spell of the machine hits all runners
// alike. It returns one result per runner, in the order given. Stopping is not
// timed, and the machine is given Pause to settle after each stop.
func MeasureStart(ctx context.Context, runners []Runner, probe Probe, rounds int, pause time.Duration, logf func(string, ...any)) ([]StartResult, error) {
	res := make([]StartResult, len(runners))
	for i, r := range runners {
		res[i].Name = r.Name()
	}
	order := make([]int, len(runners))
	for i := range order {
		order[i] = i
	}
	for round := range rounds {
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, i := range order {
			r := runners[i]
			id := fmt.Sprintf("bench-%d-%d", round, i)
			s, err := timeStart(ctx, r, id, probe)
			if err != nil {
				r.Stop(context.Background(), id) // whatever was started
				return res, fmt.Errorf("%s: %w", r.Name(), err)
			}
			res[i].Samples = append(res[i].Samples, s)
			if err := r.Stop(ctx, id); err != nil {
				return res, fmt.Errorf("%s: stop: %w", r.Name(), err)
			}
			time.Sleep(pause)
		}
		if logf != nil {
			logf("round %d done", round)
		}
	}
	return res, nil
}

// timeStart starts instance id and waits for its answer.
func timeStart(ctx context.Context, r Runner, id string, probe Probe) (StartSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	mark := NewMark()
	pctx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	returned := make(chan error, 1)
	var s StartSample
	t0 := time.Now()
	go func() {
		err := r.Start(ctx, id)
		s.Returned = time.Since(t0)
		if err != nil {
			stopProbe() // no answer will come
		}
		returned <- err
	}()
	_, err := probe.Wait(pctx, mark, r.Port(id), nil)
	s.Answered = time.Since(t0)
	if rerr := <-returned; rerr != nil {
		return s, rerr
	}
	return s, err
}

// Median returns the median of ds (the lower middle for an even count).
func Median(ds []time.Duration) time.Duration {
	return Quantile(ds, 0.5)
}

// Quantile returns the q-quantile of ds by the nearest-rank method.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Ms is d in milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / 1e6 }
