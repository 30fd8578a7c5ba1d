// Package testnet helps tests choose loopback addresses.
package testnet

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// LaterAddr returns a free loopback address ("127.0.0.1:PORT") for a listener
// that starts later, or starts again after a stop (a broker started after the
// server that dials it, a server restarted in an outage test).
//
// The port is below the kernel's ephemeral range. A port from that range (what
// ":0" gives) can be handed meanwhile to any outgoing connection - even a
// client's own attempt to reach the address, which then connects to itself
// (TCP simultaneous open) - and the listener fails with "address already in
// use", as a CI run saw with Mosquitto.
func LaterAddr(t testing.TB) string {
	t.Helper()
	low := 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 2048 {
				low = v
			}
		}
	}
	for range 200 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(1024+rand.IntN(low-1024)))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("testnet: no free loopback port below the ephemeral range")
	return ""
}
