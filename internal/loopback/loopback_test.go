package loopback

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestLaterPortIsFreeAndBelowTheEphemeralRange: the port can be listened on,
// and the kernel never hands it to an outgoing connection.
func TestLaterPortIsFreeAndBelowTheEphemeralRange(t *testing.T) {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	low, _ := strconv.Atoi(strings.Fields(string(data))[0])
	for range 20 {
		port, err := LaterPort()
		if err != nil {
			t.Fatal(err)
		}
		if port < 1024 || port >= low {
			t.Fatalf("port %d, ephemeral range from %d", port, low)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("port %d: %v", port, err)
		}
		l.Close()
	}
	if addr := TestAddr(t); !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("TestAddr %q", addr)
	}
}
