// Package peers runs the tools Tern is measured against on the same machine and with
// the same image: `runc run` of a bundle, `ctr run` on Debian's containerd, `podman
// run`, and a plain fork/exec of the app's binary. Each is a Runner, and one harness
// (MeasureStart, MonitorMemory) measures them all the same way, Tern's own ternd
// included (bench/device provides its Runner).
//
// Everything lives under one scratch directory: containerd runs as a private daemon
// (its own root, state and socket, CRI plugin off), podman reads a private
// containers.conf (CONTAINERS_CONF) and keeps its images under the scratch
// directory. Nothing is installed or configured system-wide, and nothing leaves
// loopback. The settings are those these tools need on a Debian 12 machine with
// hybrid cgroups and no systemd: runc (crun fails on hybrid cgroups), the cgroupfs
// manager, file events, explicit ulimits, ctr's --fifo-dir and --runc-root.
//
// The harness needs root, runc, containerd, ctr and podman (scripts/bench.sh
// installs them from Debian).
package peers

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Runner starts and stops instances of the example app one way (a peer tool, or
// ternd). Instances are named by the harness; the app in each listens on Port(id)
// inside the instance's network namespace.
type Runner interface {
	// Name labels the runner in results ("runc run", "podman run", ...).
	Name() string
	// Start starts instance id and returns when the command (or API call) that
	// starts it returns. The harness times it, and the app's first answer.
	Start(ctx context.Context, id string) error
	// Stop stops instance id and removes what Start made. Not timed.
	Stop(ctx context.Context, id string) error
	// Port is the TCP port the app of instance id listens on.
	Port(id string) int
}

// run runs a command and returns its combined output, or an error that quotes it.
func run(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// Require reports which of the peer tools are missing from PATH.
func Require() error {
	var missing []string
	for _, t := range []string{"runc", "containerd", "containerd-shim-runc-v2", "ctr", "podman", "conmon"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s (scripts/bench.sh installs them: apt-get install runc containerd podman)", strings.Join(missing, ", "))
	}
	return nil
}
