package app

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// exampleManifests are the manifests an author is shown: DESIGN.md's example (copied
// verbatim into testdata) and the example app's.
var exampleManifests = []string{"testdata/design-example.yaml", "../../examples/hello/tern.yaml"}

func TestParseYAMLAcceptsTheExamples(t *testing.T) {
	for _, path := range exampleManifests {
		t.Run(path, func(t *testing.T) {
			if _, err := ParseYAML(readFile(t, path)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestParseYAMLReadsEveryFieldOfTheDesignExample(t *testing.T) {
	m, err := ParseYAML(readFile(t, "testdata/design-example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{
		Name: "hello", Version: "1.2.0",
		Command:     []string{"/hello", "--listen", ":8080"},
		Env:         map[string]string{"GREETING": "hi"},
		User:        "1000:1000",
		Restart:     RestartAlways,
		StopTimeout: Duration(10 * time.Second),
		Health: &Health{
			HTTP:     &HTTPProbe{Port: 8080, Path: "/healthz"},
			Interval: Duration(5 * time.Second), Timeout: Duration(2 * time.Second), Retries: 3,
		},
		Probation: Duration(30 * time.Second),
		Boot:      true,
		After:     []string{"broker"},
		Resources: Resources{Memory: 32 << 20, CPU: 0.5, Pids: 64},
		Volumes:   []Volume{{Name: "data", Path: "/data", Size: 64 << 20}},
		Capabilities: Capabilities{
			Devices: []string{"/dev/ttyS1"},
			Network: Network{Mode: NetworkNone},
			Secrets: []string{"api-token"},
			Linux:   []string{"NET_BIND_SERVICE"},
		},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got  %+v\nwant %+v", m, want)
	}
}

func TestManifestRoundTripsThroughJSON(t *testing.T) {
	for _, path := range exampleManifests {
		t.Run(path, func(t *testing.T) {
			m, err := ParseYAML(readFile(t, path))
			if err != nil {
				t.Fatal(err)
			}
			data, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			back, err := ParseJSON(data)
			if err != nil {
				t.Fatalf("ParseJSON(%s): %v", data, err)
			}
			if !reflect.DeepEqual(back, m) {
				t.Fatalf("round trip changed the manifest:\n got %+v\nwant %+v", back, m)
			}
		})
	}
}

func TestParseYAMLNamesUnknownKeys(t *testing.T) {
	head := "name: demo\nversion: 1.0.0\n"
	cases := []struct {
		name, yaml, key, section string
	}{
		{"top level", "nmae: x\n", "nmae", "the top level"},
		{"health", "health: {tcp: 80, intervall: 5s}\n", "intervall", "health"},
		{"health.http", "health: {http: {port: 80, url: /x}}\n", "url", "health.http"},
		{"resources", "resources: {memory: 32Mi, disk: 1Gi}\n", "disk", "resources"},
		{"volumes", "volumes: [{name: d, path: /d, size: 1Mi, mode: rw}]\n", "mode", "volumes"},
		{"capabilities", "capabilities: {usb: [/dev/bus]}\n", "usb", "capabilities"},
		{"capabilities.network", "capabilities: {network: {alow: []}}\n", "alow", "capabilities.network"},
		{"capabilities.network.allow", "capabilities: {network: {allow: [{host: a.example, port: 1, protocol: tcp}]}}\n", "protocol", "capabilities.network.allow"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseYAML([]byte(head + c.yaml))
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("err = %v, want ErrBadManifest", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, `unknown key "`+c.key+`"`) || !strings.Contains(msg, "in "+c.section) {
				t.Fatalf("error %q does not name key %q in %s", msg, c.key, c.section)
			}
		})
	}
}

// TestValidateRefusesBadValuesNamingTheField runs each validation rule once. A case's
// YAML is added to a valid name and version unless it sets name itself.
func TestValidateRefusesBadValuesNamingTheField(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"name uppercase", "name: Hello\nversion: 1.0.0\n", `name "Hello"`},
		{"name leading dash", "name: -demo\nversion: 1.0.0\n", `name "-demo"`},
		{"name underscore", "name: my_app\nversion: 1.0.0\n", `name "my_app"`},
		{"name too long", "name: " + strings.Repeat("a", 64) + "\nversion: 1.0.0\n", "name"},
		{"name missing", "version: 1.0.0\n", `name ""`},
		{"version leading v", "name: demo\nversion: v1.0.0\n", `version: bad version "v1.0.0"`},
		{"version leading zero", "name: demo\nversion: 01.0.0\n", "version"},
		{"version two numbers", "name: demo\nversion: \"1.0\"\n", "version"},
		{"version missing", "name: demo\n", "version"},
		{"command empty arg", "command: [/bin/app, \"\"]\n", "command[1]"},
		{"command empty program", "command: [\"\"]\n", "command"},
		{"env name with =", "env: {\"A=B\": x}\n", `env "A=B"`},
		{"workdir relative", "workdir: www\n", `workdir "www"`},
		{"user with space", "user: \"a b\"\n", `user "a b"`},
		{"restart unknown", "restart: sometimes\n", `restart "sometimes"`},
		{"stop_timeout too long", "stop_timeout: 11m\n", "stop_timeout 11m0s"},
		{"probation too long", "probation: 25h\n", "probation 25h0m0s"},
		{"health without probe", "health: {interval: 5s}\n", "health: want exactly one of exec, tcp or http, got 0"},
		{"health two probes", "health: {tcp: 80, exec: [/bin/true]}\n", "health: want exactly one of exec, tcp or http, got 2"},
		{"health three probes", "health: {tcp: 80, exec: [/ok], http: {port: 80}}\n", "got 3"},
		{"health.tcp port", "health: {tcp: 70000}\n", "health.tcp 70000"},
		{"health.http.port", "health: {http: {port: 0}}\n", "health.http.port 0"},
		{"health.http.path", "health: {http: {port: 80, path: healthz}}\n", `health.http.path "healthz"`},
		{"health.interval too short", "health: {tcp: 80, interval: 10ms}\n", "health.interval 10ms"},
		{"health.timeout above interval", "health: {tcp: 80, interval: 1s, timeout: 2s}\n", "health.timeout 2s"},
		{"health.retries", "health: {tcp: 80, retries: 101}\n", "health.retries 101"},
		{"after itself", "after: [demo]\n", `after "demo": an app cannot start after itself`},
		{"after twice", "after: [db, db]\n", `after "db": listed twice`},
		{"after bad name", "after: [Broker]\n", `after "Broker"`},
		{"resources.memory", "resources: {memory: 1Mi}\n", "resources.memory 1Mi"},
		{"resources.cpu negative", "resources: {cpu: -1}\n", "resources.cpu -1"},
		{"resources.cpu NaN", "resources: {cpu: .nan}\n", "resources.cpu NaN"},
		{"resources.cpu infinite", "resources: {cpu: .inf}\n", "resources.cpu +Inf"},
		{"resources.pids", "resources: {pids: -1}\n", "resources.pids -1"},
		{"volume relative path", "volumes: [{name: d, path: data, size: 1Mi}]\n", `volumes: path "data"`},
		{"volume unclean path", "volumes: [{name: d, path: /data/../etc, size: 1Mi}]\n", `volumes: path "/data/../etc"`},
		{"volume at root", "volumes: [{name: d, path: /, size: 1Mi}]\n", `volumes: path "/"`},
		{"volume under /proc", "volumes: [{name: d, path: /proc/x, size: 1Mi}]\n", `volumes: path "/proc/x"`},
		{"volume under /dev", "volumes: [{name: d, path: /dev, size: 1Mi}]\n", `volumes: path "/dev"`},
		{"volume without size", "volumes: [{name: d, path: /d}]\n", `volumes: "d" needs a size quota`},
		{"volume bad name", "volumes: [{name: D, path: /d, size: 1Mi}]\n", `volumes: name "D"`},
		{"volume name twice", "volumes: [{name: d, path: /a, size: 1Mi}, {name: d, path: /b, size: 1Mi}]\n", `volumes: name "d" used twice`},
		{"volume path twice", "volumes: [{name: a, path: /d, size: 1Mi}, {name: b, path: /d, size: 1Mi}]\n", `volumes: path "/d" used twice`},
		{"device outside /dev", "capabilities: {devices: [/etc/passwd]}\n", `capabilities.devices "/etc/passwd"`},
		{"device escaping /dev", "capabilities: {devices: [/dev/../etc/shadow]}\n", `capabilities.devices "/dev/../etc/shadow"`},
		{"device /dev itself", "capabilities: {devices: [/dev]}\n", `capabilities.devices "/dev"`},
		{"device relative", "capabilities: {devices: [ttyS1]}\n", `capabilities.devices "ttyS1"`},
		{"device twice", "capabilities: {devices: [/dev/ttyS1, /dev/ttyS1]}\n", `capabilities.devices "/dev/ttyS1": listed twice`},
		{"network mode unknown", "capabilities: {network: bridge}\n", `capabilities.network "bridge"`},
		{"network allow bad host", "capabilities: {network: {allow: [{host: \"bad host\", port: 443}]}}\n", `capabilities.network.allow host "bad host"`},
		{"network allow bad port", "capabilities: {network: {allow: [{host: a.example, port: 0}]}}\n", "capabilities.network.allow a.example port 0"},
		{"network allow bad proto", "capabilities: {network: {allow: [{host: a.example, port: 1, proto: icmp}]}}\n", `capabilities.network.allow a.example proto "icmp"`},
		{"network listen port", "capabilities: {network: {listen: [65536]}}\n", "capabilities.network.listen 65536"},
		{"secret bad name", "capabilities: {secrets: [\"api token\"]}\n", `capabilities.secrets "api token"`},
		{"secret twice", "capabilities: {secrets: [a, a]}\n", `capabilities.secrets "a"`},
		{"linux cap unknown", "capabilities: {linux: [FLY]}\n", `capabilities.linux "FLY": not a Linux capability`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := c.yaml
			if !strings.HasPrefix(doc, "name:") && !strings.HasPrefix(doc, "version:") {
				doc = "name: demo\nversion: 1.0.0\n" + doc
			}
			_, err := ParseYAML([]byte(doc))
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("err = %v, want ErrBadManifest", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestValidateReportsEveryProblemAtOnce(t *testing.T) {
	_, err := ParseYAML([]byte("name: Demo\nversion: 1.0\nrestart: maybe\n"))
	for _, want := range []string{"name", "version", "restart"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v does not mention %s", err, want)
		}
	}
}

func TestValidateRefusesForbiddenCapabilities(t *testing.T) {
	for _, c := range append([]string{"cap_sys_admin", "CAP_SYS_MODULE", " sys_ptrace "}, ForbiddenCapabilities...) {
		t.Run(c, func(t *testing.T) {
			m := minimalManifest(t)
			m.Capabilities.Linux = []string{"NET_BIND_SERVICE", c}
			err := m.Validate()
			if !errors.Is(err, ErrForbiddenCapability) {
				t.Fatalf("err = %v, want ErrForbiddenCapability", err)
			}
			if !strings.Contains(err.Error(), "capabilities.linux "+normalizeCap(c)) {
				t.Fatalf("error %q does not name the capability", err)
			}
		})
	}
}

func TestValidateAcceptsCapabilitiesInAnySpelling(t *testing.T) {
	m := minimalManifest(t)
	m.Capabilities.Linux = []string{"net_bind_service", "CAP_NET_RAW", "CHOWN"}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	m.ApplyDefaults()
	if want := []string{"NET_BIND_SERVICE", "NET_RAW", "CHOWN"}; !reflect.DeepEqual(m.Capabilities.Linux, want) {
		t.Fatalf("normalized to %v, want %v", m.Capabilities.Linux, want)
	}
}

func TestParseYAMLTypeErrorsNameLineAndValue(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"duration without unit", "stop_timeout: 10\n", `line 3: bad duration "10"`},
		{"negative duration", "probation: -5s\n", `line 3: negative duration "-5s"`},
		{"duration not a scalar", "probation: [1s]\n", "line 3: want a duration"},
		{"bad size", "resources: {memory: 32Q}\n", `line 3: bad size "32Q"`},
		{"port not a number", "health: {tcp: http}\n", "line 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseYAML([]byte("name: demo\nversion: 1.0.0\n" + c.yaml))
			if !errors.Is(err, ErrBadManifest) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrBadManifest containing %q", err, c.want)
			}
		})
	}
}

func TestParseYAMLRefusesDocumentsThatAreNotOneManifest(t *testing.T) {
	cases := map[string]string{
		"empty":          "",
		"two documents":  minimalYAML + "---\n" + minimalYAML,
		"a list":         "- name: demo\n",
		"duplicate key":  minimalYAML + "name: other\n",
		"syntax error":   "name: [demo\n",
		"network a list": "name: demo\nversion: 1.0.0\ncapabilities: {network: [none]}\n",
	}
	for name, doc := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseYAML([]byte(doc)); !errors.Is(err, ErrBadManifest) {
				t.Fatalf("err = %v, want ErrBadManifest", err)
			}
		})
	}
}

func TestParseYAMLRefusesAnOversizedManifest(t *testing.T) {
	doc := []byte(minimalYAML + "# " + strings.Repeat("x", MaxManifestSize) + "\n")
	_, err := ParseYAML(doc)
	if !errors.Is(err, ErrBadManifest) || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("err = %v, want ErrBadManifest naming the limit", err)
	}
}

func TestParseJSONRefusesUnknownFieldsAndTrailingData(t *testing.T) {
	cases := map[string]string{
		"unknown top-level field": `{"name":"demo","version":"1.0.0","color":"red"}`,
		"unknown nested field":    `{"name":"demo","version":"1.0.0","health":{"tcp":80,"url":"/"}}`,
		"unknown network field":   `{"name":"demo","version":"1.0.0","capabilities":{"network":{"deny":[]}}}`,
		"trailing data":           `{"name":"demo","version":"1.0.0"} {}`,
		"duration as a number":    `{"name":"demo","version":"1.0.0","probation":30}`,
		"invalid value":           `{"name":"demo","version":"v1"}`,
	}
	for name, doc := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseJSON([]byte(doc)); !errors.Is(err, ErrBadManifest) {
				t.Fatalf("err = %v, want ErrBadManifest", err)
			}
		})
	}
}

func TestNetworkFormsRoundTripYAMLToJSON(t *testing.T) {
	cases := []struct {
		name, yaml, json, mode string
	}{
		{"default", "", ``, NetworkNone},
		{"none", "capabilities: {network: none}\n", `"network":"none"`, NetworkNone},
		{"host", "capabilities: {network: host}\n", `"network":"host"`, NetworkHost},
		{"allowlist",
			"capabilities:\n  network:\n    allow: [{host: api.example.com, port: 443, proto: tcp}, {host: 10.0.0.0/8, port: 53, proto: udp}]\n    listen: [8080]\n",
			`"network":{"allow":[{"host":"api.example.com","port":443,"proto":"tcp"},{"host":"10.0.0.0/8","port":53,"proto":"udp"}],"listen":[8080]}`,
			"allowlist"},
		{"listen only", "capabilities: {network: {listen: [80, 443]}}\n", `"network":{"listen":[80,443]}`, "allowlist"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := ParseYAML([]byte("name: demo\nversion: 1.0.0\n" + c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			data, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if c.json == "" && strings.Contains(string(data), `"network"`) {
				t.Fatalf("default network written to JSON: %s", data)
			}
			if !strings.Contains(string(data), c.json) {
				t.Fatalf("JSON %s does not contain %s", data, c.json)
			}
			back, err := ParseJSON(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back.Capabilities.Network, m.Capabilities.Network) {
				t.Fatalf("network %+v came back as %+v", m.Capabilities.Network, back.Capabilities.Network)
			}
			if got := back.Capabilities.Network.EffectiveMode(); got != c.mode {
				t.Fatalf("effective mode %q, want %q", got, c.mode)
			}
		})
	}
}

func TestApplyDefaultsFillsWhatTheAuthorLeftOut(t *testing.T) {
	m, err := ParseYAML([]byte(minimalYAML + "health: {tcp: 80}\ncapabilities: {network: {allow: [{host: a.example, port: 1}]}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	m.ApplyDefaults()
	h := m.Health
	if m.Restart != RestartAlways || m.StopTimeout.D() != DefaultStopTimeout || m.Probation.D() != DefaultProbation ||
		h.Interval.D() != DefaultHealthInterval || h.Timeout.D() != DefaultHealthTimeout || h.Retries != DefaultHealthRetries {
		t.Fatalf("defaults not applied: %+v %+v", m, h)
	}
	if p := m.Capabilities.Network.Allow[0].Proto; p != "tcp" {
		t.Fatalf("allow proto defaulted to %q, want tcp", p)
	}
	if err := m.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func TestApplyDefaultsKeepsTheHealthTimeoutWithinTheInterval(t *testing.T) {
	cases := []struct {
		yaml              string
		interval, timeout time.Duration
	}{
		{"health: {tcp: 80, interval: 1s}\n", time.Second, time.Second},
		{"health: {tcp: 80, interval: 500ms}\n", 500 * time.Millisecond, 500 * time.Millisecond},
		{"health: {tcp: 80, timeout: 15s}\n", 15 * time.Second, 15 * time.Second},
		{"health: {tcp: 80, timeout: 1s}\n", DefaultHealthInterval, time.Second},
		{"health: {tcp: 80, interval: 1m}\n", time.Minute, DefaultHealthTimeout},
	}
	for _, c := range cases {
		m, err := ParseYAML([]byte(minimalYAML + c.yaml))
		if err != nil {
			t.Fatal(err)
		}
		m.ApplyDefaults()
		if err := m.Validate(); err != nil {
			t.Errorf("%s: defaults made it invalid: %v", c.yaml, err)
		}
		if m.Health.Interval.D() != c.interval || m.Health.Timeout.D() != c.timeout {
			t.Errorf("%s: interval %s timeout %s, want %s and %s", c.yaml, m.Health.Interval, m.Health.Timeout, c.interval, c.timeout)
		}
	}
}

func TestParseSize(t *testing.T) {
	good := []struct {
		in   string
		want Size
	}{
		{"0", 0}, {"1000", 1000}, {"512Ki", 512 << 10}, {"64Mi", 64 << 20}, {"1Gi", 1 << 30},
		{"2Ti", 2 << 40}, {"1K", 1000}, {"500M", 500e6}, {"1G", 1e9}, {"3T", 3e12}, {" 5Mi ", 5 << 20},
	}
	for _, c := range good {
		got, err := ParseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
		if back, err := ParseSize(got.String()); err != nil || back != got {
			t.Errorf("ParseSize(%q.String() = %q) = %d, %v", c.in, got.String(), back, err)
		}
	}
	for _, in := range []string{"", "Mi", "-1", "-1Mi", "1.5Gi", "64MB", "64mi", "1e3", "0x10", "9999999Ti", "99999999999999999999"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
	if s := Size(64 << 20).String(); s != "64Mi" {
		t.Errorf("Size(64Mi).String() = %q", s)
	}
}

func TestParseDuration(t *testing.T) {
	good := map[string]time.Duration{"500ms": 500 * time.Millisecond, "10s": 10 * time.Second, "1m30s": 90 * time.Second, " 5m": 5 * time.Minute, "0s": 0}
	for in, want := range good {
		var d Duration
		if err := json.Unmarshal([]byte(`"`+in+`"`), &d); err != nil || d.D() != want {
			t.Errorf("duration %q = %v, %v; want %v", in, d, err, want)
		}
	}
	for _, in := range []string{`"10"`, `"-1s"`, `"soon"`, `""`, `10`, `null`} {
		var d Duration
		if err := json.Unmarshal([]byte(in), &d); err == nil && in != `null` {
			t.Errorf("duration %s accepted as %v", in, d)
		}
	}
}

func TestParseVersion(t *testing.T) {
	good := []string{"0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-0.3.7", "1.0.0-x.7.z.92",
		"1.0.0+20130313144700", "1.0.0-beta+exp.sha.5114f85", "1.0.0-0a", "1.0.0--"}
	for _, s := range good {
		v, err := ParseVersion(s)
		if err != nil {
			t.Errorf("ParseVersion(%q): %v", s, err)
		} else if v.String() != s {
			t.Errorf("ParseVersion(%q).String() = %q", s, v.String())
		}
	}
	bad := []string{"", "1", "1.0", "1.0.0.0", "v1.0.0", "01.0.0", "1.01.0", "1.0.01", "1.0.0-01", "1.0.0-",
		"1.0.0+", "1.0.0-a..b", "1.0.0-a_b", "1.0.0+a_b", "-1.0.0", "1.0.x", " 1.0.0", "18446744073709551616.0.0"}
	for _, s := range bad {
		if v, err := ParseVersion(s); err == nil {
			t.Errorf("ParseVersion(%q) = %v, want an error", s, v)
		}
	}
}

func TestVersionCompareFollowsSemverPrecedence(t *testing.T) {
	// Each list is in increasing precedence (semver 2.0, section 11).
	orders := [][]string{
		{"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"},
		{"1.0.0", "2.0.0", "2.1.0", "2.1.1"},
		{"1.9.0", "1.10.0", "1.11.0"},
		{"0.0.9", "0.1.0", "1.0.0-0", "1.0.0-1", "1.0.0-2", "1.0.0-10", "1.0.0-a", "1.0.0"},
	}
	for _, order := range orders {
		vs := make([]Version, len(order))
		for i, s := range order {
			v, err := ParseVersion(s)
			if err != nil {
				t.Fatal(err)
			}
			vs[i] = v
		}
		for i := range vs {
			for j := range vs {
				want := 0
				if i < j {
					want = -1
				} else if i > j {
					want = 1
				}
				if got := vs[i].Compare(vs[j]); got != want {
					t.Errorf("Compare(%s, %s) = %d, want %d", order[i], order[j], got, want)
				}
			}
		}
	}
	a, _ := ParseVersion("1.0.0+build.1")
	b, _ := ParseVersion("1.0.0+build.2")
	if a.Compare(b) != 0 {
		t.Errorf("build metadata changed precedence")
	}
}
