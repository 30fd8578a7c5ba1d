package app

import (
	"errors"
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Defaults applied at build time, so the signed manifest says exactly what a device
// will do.
const (
	DefaultStopTimeout    = 10 * time.Second
	DefaultProbation      = 30 * time.Second
	DefaultHealthInterval = 10 * time.Second
	DefaultHealthTimeout  = 2 * time.Second
	DefaultHealthRetries  = 3
)

// ForbiddenCapabilities are Linux capabilities no app may hold: each one hands a
// container the keys to the host (mounts, kernel modules, raw memory and devices,
// tracing other processes, reboot, file handles outside its root, BPF, LSM policy).
var ForbiddenCapabilities = []string{
	"SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO", "SYS_BOOT",
	"DAC_READ_SEARCH", "BPF", "PERFMON", "MAC_ADMIN", "MAC_OVERRIDE",
}

// knownCapabilities are the Linux capabilities as of Linux 6.x, without "CAP_".
var knownCapabilities = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
	"SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
	"NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
	"SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
	"SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
	"AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
	"BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

// ErrForbiddenCapability reports a manifest asking for a capability in ForbiddenCapabilities.
var ErrForbiddenCapability = errors.New("forbidden capability")

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	secretRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	userRE   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$`)
	hostRE   = regexp.MustCompile(`^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

// ValidName reports whether s may name an app (or a volume): [a-z0-9-], at most 63.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ApplyDefaults fills in what the author left out.
func (m *Manifest) ApplyDefaults() {
	if m.Restart == "" {
		m.Restart = RestartAlways
	}
	if m.StopTimeout == 0 {
		m.StopTimeout = Duration(DefaultStopTimeout)
	}
	if m.Probation == 0 {
		m.Probation = Duration(DefaultProbation)
	}
	if h := m.Health; h != nil {
		// A default never makes the timeout exceed the interval: that would turn a
		// valid tern.yaml into an invalid signed manifest.
		if h.Interval == 0 {
			h.Interval = max(Duration(DefaultHealthInterval), h.Timeout)
		}
		if h.Timeout == 0 {
			h.Timeout = min(Duration(DefaultHealthTimeout), h.Interval)
		}
		if h.Retries == 0 {
			h.Retries = DefaultHealthRetries
		}
	}
	if m.Capabilities.Network.IsZero() {
		m.Capabilities.Network.Mode = NetworkNone
	}
	for i, c := range m.Capabilities.Linux {
		m.Capabilities.Linux[i] = normalizeCap(c)
	}
	for i := range m.Capabilities.Network.Allow {
		if m.Capabilities.Network.Allow[i].Proto == "" {
			m.Capabilities.Network.Allow[i].Proto = "tcp"
		}
	}
}

func normalizeCap(c string) string {
	return strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(c)), "CAP_")
}

// Validate checks every field, including those a device will only use in later
// releases, and returns all problems at once so an author fixes them in one go.
func (m *Manifest) Validate() error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	var forbidden error

	if !ValidName(m.Name) {
		bad("name %q: want 1-63 of [a-z0-9-], not starting or ending with '-'", m.Name)
	}
	if _, err := ParseVersion(m.Version); err != nil {
		bad("version: %v", err)
	}
	for i, a := range m.Command {
		if a == "" || strings.ContainsRune(a, 0) {
			bad("command[%d]: empty or contains NUL", i)
		}
	}
	if len(m.Command) > 0 && m.Command[0] == "" {
		bad("command: the program is empty")
	}
	for k, v := range m.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			bad("env %q: a name must be non-empty without '=' and neither may hold NUL", k)
		}
	}
	if m.WorkDir != "" && !path.IsAbs(m.WorkDir) {
		bad("workdir %q: want an absolute path", m.WorkDir)
	}
	if m.User != "" && !userRE.MatchString(m.User) {
		bad("user %q: want uid[:gid] or name[:group]", m.User)
	}
	switch m.Restart {
	case "", RestartAlways, RestartOnFailure, RestartNever:
	default:
		bad("restart %q: want always, on-failure or never", m.Restart)
	}
	if m.StopTimeout.D() > 10*time.Minute {
		bad("stop_timeout %s: at most 10m", m.StopTimeout)
	}
	if m.Probation.D() > 24*time.Hour {
		bad("probation %s: at most 24h", m.Probation)
	}
	if h := m.Health; h != nil {
		n := 0
		if len(h.Exec) > 0 {
			n++
		}
		if h.TCP != 0 {
			n++
			if !validPort(h.TCP) {
				bad("health.tcp %d: want a port 1-65535", h.TCP)
			}
		}
		if h.HTTP != nil {
			n++
			if !validPort(h.HTTP.Port) {
				bad("health.http.port %d: want a port 1-65535", h.HTTP.Port)
			}
			if h.HTTP.Path != "" && !strings.HasPrefix(h.HTTP.Path, "/") {
				bad("health.http.path %q: want a path starting with /", h.HTTP.Path)
			}
		}
		if n != 1 {
			bad("health: want exactly one of exec, tcp or http, got %d", n)
		}
		if h.Interval != 0 && h.Interval.D() < 100*time.Millisecond {
			bad("health.interval %s: at least 100ms", h.Interval)
		}
		if h.Timeout != 0 && h.Interval != 0 && h.Timeout > h.Interval {
			bad("health.timeout %s: must not exceed interval %s", h.Timeout, h.Interval)
		}
		if h.Retries < 0 || h.Retries > 100 {
			bad("health.retries %d: want 0-100", h.Retries)
		}
	}
	seenAfter := map[string]bool{}
	for _, a := range m.After {
		switch {
		case !ValidName(a):
			bad("after %q: not an app name", a)
		case a == m.Name:
			bad("after %q: an app cannot start after itself", a)
		case seenAfter[a]:
			bad("after %q: listed twice", a)
		}
		seenAfter[a] = true
	}
	r := m.Resources
	if r.Memory != 0 && r.Memory < 4<<20 {
		bad("resources.memory %s: at least 4Mi", r.Memory)
	}
	if !(r.CPU >= 0 && r.CPU <= 1024) { // written so NaN is refused too
		bad("resources.cpu %g: want 0-1024 cores", r.CPU)
	}
	if r.Pids < 0 {
		bad("resources.pids %d: must not be negative", r.Pids)
	}
	names, paths := map[string]bool{}, map[string]bool{}
	for _, v := range m.Volumes {
		if !ValidName(v.Name) {
			bad("volumes: name %q: want [a-z0-9-]", v.Name)
		}
		if names[v.Name] {
			bad("volumes: name %q used twice", v.Name)
		}
		names[v.Name] = true
		if !cleanAbs(v.Path) || v.Path == "/" || underAny(v.Path, "/proc", "/sys", "/dev") {
			bad("volumes: path %q: want a clean absolute path outside /, /proc, /sys and /dev", v.Path)
		}
		if paths[v.Path] {
			bad("volumes: path %q used twice", v.Path)
		}
		paths[v.Path] = true
		if v.Size <= 0 {
			bad("volumes: %q needs a size quota (e.g. size: 64Mi)", v.Name)
		}
	}
	c := m.Capabilities
	seenDev := map[string]bool{}
	for _, d := range c.Devices {
		if !cleanAbs(d) || !strings.HasPrefix(d, "/dev/") {
			bad("capabilities.devices %q: want a clean path under /dev/", d)
		}
		if seenDev[d] {
			bad("capabilities.devices %q: listed twice", d)
		}
		seenDev[d] = true
	}
	switch n := c.Network; {
	case n.Mode != "" && n.Mode != NetworkNone && n.Mode != NetworkHost:
		bad("capabilities.network %q: want none, host or {allow: [...], listen: [...]}", n.Mode)
	case n.Mode == "":
		for _, a := range n.Allow {
			if !validHost(a.Host) {
				bad("capabilities.network.allow host %q: want a DNS name, IP address or CIDR", a.Host)
			}
			if !validPort(a.Port) {
				bad("capabilities.network.allow %s port %d: want 1-65535", a.Host, a.Port)
			}
			if a.Proto != "" && a.Proto != "tcp" && a.Proto != "udp" {
				bad("capabilities.network.allow %s proto %q: want tcp or udp", a.Host, a.Proto)
			}
		}
		for _, p := range n.Listen {
			if !validPort(p) {
				bad("capabilities.network.listen %d: want a port 1-65535", p)
			}
		}
	}
	seenSecret := map[string]bool{}
	for _, s := range c.Secrets {
		if !secretRE.MatchString(s) || seenSecret[s] {
			bad("capabilities.secrets %q: bad or repeated name", s)
		}
		seenSecret[s] = true
	}
	for _, raw := range c.Linux {
		cp := normalizeCap(raw)
		switch {
		case slices.Contains(ForbiddenCapabilities, cp):
			bad("capabilities.linux %s: never granted to an app", cp)
			forbidden = ErrForbiddenCapability
		case !slices.Contains(knownCapabilities, cp):
			bad("capabilities.linux %q: not a Linux capability", raw)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	kind := ErrBadManifest
	if forbidden != nil {
		kind = forbidden
	}
	return fmt.Errorf("%w: %s", kind, strings.Join(errs, "; "))
}

func validPort(p int) bool { return p >= 1 && p <= 65535 }

func cleanAbs(p string) bool { return path.IsAbs(p) && path.Clean(p) == p }

func underAny(p string, dirs ...string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if _, _, err := net.ParseCIDR(h); err == nil {
		return true
	}
	return len(h) <= 253 && hostRE.MatchString(h)
}
