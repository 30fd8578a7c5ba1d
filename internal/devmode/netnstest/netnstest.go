// Package netnstest builds small networks for tests: two network namespaces
// joined by a veth pair, as a device and a workstation on one LAN. Nothing it
// makes reaches the host's own interfaces, so multicast (mDNS) and listeners in
// the tests stay inside. Tests need root and ip(8) (iproute2): without them
// they skip, or fail when CI=true.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// LAN is two namespaces on one link.
type LAN struct {
	Device, Workstation     string // namespace names
	DeviceIP, WorkstationIP string // their addresses on the link (/24)
}

var subnet atomic.Uint32 // distinct subnets for LANs of one test binary

// Require skips (or, under CI, fails) a test that cannot build namespaces.
func Require(t testing.TB) {
	t.Helper()
	_, err := exec.LookPath("ip")
	_, err2 := exec.LookPath("nsenter")
	if err != nil || err2 != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("network namespace tests need root, ip (iproute2) and nsenter (util-linux)")
		}
		t.Skip("needs root, ip and nsenter")
	}
}

// New makes the two namespaces and the link between them, removed when the
// test ends.
func New(t testing.TB) *LAN {
	t.Helper()
	Require(t)
	var b [3]byte
	rand.Read(b[:])
	tag := hex.EncodeToString(b[:])
	n := 10 + subnet.Add(1)%200
	l := &LAN{
		Device: "tern-d-" + tag, Workstation: "tern-w-" + tag,
		DeviceIP: fmt.Sprintf("10.213.%d.1", n), WorkstationIP: fmt.Sprintf("10.213.%d.2", n),
	}
	vd, vw := "vd"+tag, "vw"+tag
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", l.Device).Run()
		exec.Command("ip", "netns", "del", l.Workstation).Run()
	})
	steps := [][]string{
		{"netns", "add", l.Device},
		{"netns", "add", l.Workstation},
		{"link", "add", vd, "type", "veth", "peer", "name", vw},
		{"link", "set", vd, "netns", l.Device},
		{"link", "set", vw, "netns", l.Workstation},
		{"-n", l.Device, "addr", "add", l.DeviceIP + "/24", "dev", vd},
		{"-n", l.Workstation, "addr", "add", l.WorkstationIP + "/24", "dev", vw},
		{"-n", l.Device, "link", "set", "lo", "up"},
		{"-n", l.Workstation, "link", "set", "lo", "up"},
		{"-n", l.Device, "link", "set", vd, "up"},
		{"-n", l.Workstation, "link", "set", vw, "up"},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	return l
}

// Command runs name in namespace ns (its network only: the mount namespace
// and everything else stay the test's).
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, "--", name}, args...)...)
}
