package discovery

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tern-iot/tern/internal/devmode"
	"github.com/tern-iot/tern/internal/devmode/netnstest"
)

// TestMain doubles as the advertiser the tests run in another namespace: with
// TERN_TEST_ADVERTISE=PORT the binary announces a device until stdin closes.
func TestMain(m *testing.M) {
	if p := os.Getenv("TERN_TEST_ADVERTISE"); p != "" {
		port, _ := strconv.Atoi(p)
		ann, err := Advertise(context.Background(), slog.New(slog.DiscardHandler), testInfo, port)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
		ann.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var testInfo = devmode.DeviceInfo{
	ID: "0123456789ab", Name: "gateway", Model: "Test Board", OS: "Debian GNU/Linux 12", Arch: "amd64",
	Ternd: "1.2.3", Apps: "hello@1.0.0", Fingerprint: "0123456789abcdef",
}

func TestBrowseFindsDeviceInAnotherNamespace(t *testing.T) {
	lan := netnstest.New(t)
	cmd := netnstest.Command(lan.Device, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TERN_TEST_ADVERTISE=7443")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Wait() })
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("advertiser: %q", line)
	}
	// The browser runs in the workstation namespace: a child again.
	found := browseIn(t, lan.Workstation, 2*time.Second)
	if len(found) != 1 {
		t.Fatalf("found %d devices, want 1: %+v", len(found), found)
	}
	d := found[0]
	want := testInfo
	want.Address = lan.DeviceIP + ":7443"
	want.Instance = "gateway-0123456789ab"
	if d != want {
		t.Fatalf("found %+v\nwant  %+v", d, want)
	}
}

func TestBrowseFindsNothingWhenNoDeviceAnnounces(t *testing.T) {
	lan := netnstest.New(t)
	if found := browseIn(t, lan.Workstation, time.Second); len(found) != 0 {
		t.Fatalf("found %+v on an empty LAN", found)
	}
}

// browseIn browses from namespace ns by running this test binary there.
func browseIn(t *testing.T, ns string, timeout time.Duration) []devmode.DeviceInfo {
	t.Helper()
	cmd := netnstest.Command(ns, os.Args[0], "-test.run=^TestBrowseHelper$")
	cmd.Env = append(os.Environ(), "TERN_TEST_BROWSE="+timeout.String())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("browse in %s: %v\n%s", ns, err, out)
	}
	var found []devmode.DeviceInfo
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var d devmode.DeviceInfo
		if n, _ := fmt.Sscanf(sc.Text(), "FOUND %q %q %q %q %q %q %q %q %q %q", &d.ID, &d.Name, &d.Model, &d.OS, &d.Arch,
			&d.Ternd, &d.Apps, &d.Fingerprint, &d.Address, &d.Instance); n == 10 {
			found = append(found, d)
		}
	}
	return found
}

// TestBrowseHelper browses when run by browseIn; otherwise it does nothing.
func TestBrowseHelper(t *testing.T) {
	timeout, err := time.ParseDuration(os.Getenv("TERN_TEST_BROWSE"))
	if err != nil {
		t.Skip("helper for browseIn")
	}
	found, err := Browse(context.Background(), slog.New(slog.DiscardHandler), timeout)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range found {
		fmt.Printf("FOUND %q %q %q %q %q %q %q %q %q %q\n", d.ID, d.Name, d.Model, d.OS, d.Arch, d.Ternd, d.Apps, d.Fingerprint, d.Address, d.Instance)
	}
}
