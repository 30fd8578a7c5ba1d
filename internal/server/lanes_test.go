package server

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/tern-iot/tern/internal/link"
)

// TestLanesKeepEachDevicesOrder dispatches interleaved messages from many devices
// into a few lanes: each device's messages are handled in the order they came.
func TestLanesKeepEachDevicesOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	seen := map[string][]int{}
	done := make(chan struct{}, 1000)
	l := newLanes(ctx, 4, func(pr paho.PublishReceived) {
		id, _, _ := link.SplitTopic(pr.Packet.Topic)
		n, _ := strconv.Atoi(string(pr.Packet.Payload))
		mu.Lock()
		seen[id] = append(seen[id], n)
		mu.Unlock()
		done <- struct{}{}
	})
	for n := range 100 {
		for d := range 10 {
			id := fmt.Sprintf("dev%02d", d)
			l.dispatch(paho.PublishReceived{Packet: &paho.Publish{Topic: link.Topic(id, link.TopicEvents), Payload: []byte(strconv.Itoa(n))}})
		}
	}
	for range 1000 {
		<-done
	}
	for id, got := range seen {
		if len(got) != 100 {
			t.Fatalf("%s: %d messages", id, len(got))
		}
		for i, n := range got {
			if n != i {
				t.Fatalf("%s: message %d handled in place %d", id, n, i)
			}
		}
	}
	if len(seen) != 10 {
		t.Fatalf("%d devices", len(seen))
	}
}
