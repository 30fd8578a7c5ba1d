// Package loopback chooses loopback ports for listeners that start later: a
// broker started after the server that dials it, a server restarted in an
// outage test, a PostgreSQL cluster started after initdb.
//
// The port is below the kernel's ephemeral range. A port from that range (what
// ":0" gives) can be handed meanwhile to any outgoing connection - even a
// client's own attempt to reach the address, which then connects to itself
// (TCP simultaneous open) - and the listener fails with "address already in
// use", as a CI run saw with Mosquitto.
package loopback

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// LaterPort returns a loopback port that is free now and outside the
// ephemeral range.
func LaterPort() (int, error) {
	low := 32768
	if data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(data)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 2048 {
				low = v
			}
		}
	}
	for range 200 {
		port := 1024 + rand.IntN(low-1024)
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, errors.New("loopback: no free port below the ephemeral range")
}

// LaterAddr is LaterPort as "127.0.0.1:PORT".
func LaterAddr() (string, error) {
	port, err := LaterPort()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
}

// TB is the part of testing.TB that TestAddr uses (this package stays free of
// the testing package: the fleet simulator and pgcluster use it too).
type TB interface {
	Helper()
	Fatal(args ...any)
}

// TestAddr is LaterAddr for tests: it fails the test on error.
func TestAddr(t TB) string {
	t.Helper()
	addr, err := LaterAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
