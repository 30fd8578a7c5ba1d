// Package app is Tern's application package: the manifest an author writes
// (tern.yaml), the signed package built from it and an OCI image (.tern), and the
// one-pass reader that verifies a package before anything of it is kept.
package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxManifestSize bounds tern.yaml and manifest.json: a manifest is a page of text,
// and a reader must not be made to buffer an unbounded one.
const MaxManifestSize = 1 << 20

// ErrBadManifest reports a manifest that does not follow the schema.
var ErrBadManifest = errors.New("bad manifest")

// Manifest is an application's manifest: what tern.yaml says, and, once built into a
// package, with command, env, workdir and user resolved from the image. The YAML and
// JSON key names are a contract with authors and devices: add fields, never rename.
type Manifest struct {
	Name           string            `json:"name" yaml:"name"`
	Version        string            `json:"version" yaml:"version"`
	Command        []string          `json:"command,omitempty" yaml:"command"`
	Env            map[string]string `json:"env,omitempty" yaml:"env"`
	WorkDir        string            `json:"workdir,omitempty" yaml:"workdir"`
	User           string            `json:"user,omitempty" yaml:"user"`
	Restart        RestartPolicy     `json:"restart,omitempty" yaml:"restart"`
	StopTimeout    Duration          `json:"stop_timeout,omitempty" yaml:"stop_timeout"`
	Health         *Health           `json:"health,omitempty" yaml:"health"`
	Probation      Duration          `json:"probation,omitempty" yaml:"probation"`
	Boot           bool              `json:"boot,omitempty" yaml:"boot"`
	After          []string          `json:"after,omitempty" yaml:"after"`
	Resources      Resources         `json:"resources,omitzero" yaml:"resources"`
	Volumes        []Volume          `json:"volumes,omitempty" yaml:"volumes"`
	Capabilities   Capabilities      `json:"capabilities,omitzero" yaml:"capabilities"`
	AllowDowngrade bool              `json:"allow_downgrade,omitempty" yaml:"allow_downgrade"`
}

// RestartPolicy says when a stopped app is started again.
type RestartPolicy string

// Restart policies.
const (
	RestartAlways    RestartPolicy = "always"
	RestartOnFailure RestartPolicy = "on-failure"
	RestartNever     RestartPolicy = "never"
)

// Health is an app's health check: exactly one of Exec, TCP or HTTP.
type Health struct {
	Exec     []string   `json:"exec,omitempty" yaml:"exec"`
	TCP      int        `json:"tcp,omitempty" yaml:"tcp"`
	HTTP     *HTTPProbe `json:"http,omitempty" yaml:"http"`
	Interval Duration   `json:"interval,omitempty" yaml:"interval"`
	Timeout  Duration   `json:"timeout,omitempty" yaml:"timeout"`
	Retries  int        `json:"retries,omitempty" yaml:"retries"`
}

// HTTPProbe is a health check by HTTP GET: healthy on a 2xx or 3xx answer.
type HTTPProbe struct {
	Port int    `json:"port" yaml:"port"`
	Path string `json:"path,omitempty" yaml:"path"`
}

// Resources are an app's cgroup limits. Zero means no limit of that kind.
type Resources struct {
	Memory Size    `json:"memory,omitempty" yaml:"memory"`
	CPU    float64 `json:"cpu,omitempty" yaml:"cpu"` // in cores: 0.5 is half a core
	Pids   int64   `json:"pids,omitempty" yaml:"pids"`
}

// Volume is persistent storage that survives updates of the app.
type Volume struct {
	Name string `json:"name" yaml:"name"`
	Path string `json:"path" yaml:"path"`
	Size Size   `json:"size" yaml:"size"`
}

// Capabilities is everything an app may reach beyond its own files. All of it is
// denied unless declared here.
type Capabilities struct {
	Devices []string `json:"devices,omitempty" yaml:"devices"`
	Network Network  `json:"network,omitzero" yaml:"network"`
	Secrets []string `json:"secrets,omitempty" yaml:"secrets"`
	Linux   []string `json:"linux,omitempty" yaml:"linux"`
}

// Network modes. An allowlist (Allow, Listen) has no mode name.
const (
	NetworkNone = "none"
	NetworkHost = "host"
)

// Network is an app's network capability: "none" (loopback only, the default),
// "host" (the device's network; a device allows it only when configured to), or an
// allowlist of hosts it may reach and ports it may listen on.
type Network struct {
	Mode   string     `json:"-" yaml:"-"` // none or host; empty when an allowlist is given
	Allow  []NetAllow `json:"allow,omitempty" yaml:"allow"`
	Listen []int      `json:"listen,omitempty" yaml:"listen"`
}

// NetAllow is one destination an app may reach.
type NetAllow struct {
	Host  string `json:"host" yaml:"host"` // DNS name, IP address or CIDR
	Port  int    `json:"port" yaml:"port"`
	Proto string `json:"proto,omitempty" yaml:"proto"` // tcp (default) or udp
}

// IsAllowlist reports whether n is an allowlist rather than a named mode.
func (n Network) IsAllowlist() bool { return n.Mode == "" && (len(n.Allow) > 0 || len(n.Listen) > 0) }

// EffectiveMode is the mode a device applies: none, host or allowlist.
func (n Network) EffectiveMode() string {
	switch {
	case n.IsAllowlist():
		return "allowlist"
	case n.Mode == "":
		return NetworkNone
	}
	return n.Mode
}

// networkFields is the mapping form of Network, decoded strictly.
type networkFields struct {
	Allow  []NetAllow `json:"allow,omitempty" yaml:"allow"`
	Listen []int      `json:"listen,omitempty" yaml:"listen"`
}

// UnmarshalYAML reads "none", "host" or {allow: [...], listen: [...]}.
func (n *Network) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind == yaml.ScalarNode {
		*n = Network{Mode: node.Value}
		return nil
	}
	if err := checkKeys(node, "capabilities.network", "allow", "listen"); err != nil {
		return err
	}
	for _, item := range mappingValue(node, "allow") {
		if err := checkKeys(item, "capabilities.network.allow", "host", "port", "proto"); err != nil {
			return err
		}
	}
	var f networkFields
	if err := node.Decode(&f); err != nil {
		return err
	}
	*n = Network{Allow: f.Allow, Listen: f.Listen}
	return nil
}

// MarshalJSON writes the mode name, or the allowlist object.
func (n Network) MarshalJSON() ([]byte, error) {
	if n.Mode != "" || !n.IsAllowlist() {
		return json.Marshal(n.EffectiveMode())
	}
	return json.Marshal(networkFields{Allow: n.Allow, Listen: n.Listen})
}

// UnmarshalJSON reads what MarshalJSON writes, strictly.
func (n *Network) UnmarshalJSON(b []byte) error {
	var mode string
	if json.Unmarshal(b, &mode) == nil {
		*n = Network{Mode: mode}
		return nil
	}
	var f networkFields
	if err := strictJSON(b, &f); err != nil {
		return fmt.Errorf("capabilities.network: %w", err)
	}
	*n = Network{Allow: f.Allow, Listen: f.Listen}
	return nil
}

// IsZero lets omitzero drop the default network from manifest.json.
func (n Network) IsZero() bool { return n.Mode == "" && !n.IsAllowlist() }

// checkKeys refuses a mapping key outside allowed, naming it. yaml.v3 checks unknown
// keys only for plain structs, so mappings decoded by hand are checked here.
func checkKeys(node *yaml.Node, where string, allowed ...string) error {
	if node.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: %s: want a mapping", node.Line, where)
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		k := node.Content[i]
		ok := false
		for _, a := range allowed {
			ok = ok || k.Value == a
		}
		if !ok {
			return fmt.Errorf("line %d: unknown key %q in %s (known: %s)", k.Line, k.Value, where, strings.Join(allowed, ", "))
		}
	}
	return nil
}

func mappingValue(node *yaml.Node, key string) []*yaml.Node {
	for i := 0; i+1 < len(node.Content); i += 2 {
		if node.Content[i].Value == key && node.Content[i+1].Kind == yaml.SequenceNode {
			return node.Content[i+1].Content
		}
	}
	return nil
}

// yamlUnknownField matches yaml.v3's message for an unknown key of a struct.
var yamlUnknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type app\.(\w+)`)

// sectionOf names the tern.yaml section a Go type stands for, for error messages.
var sectionOf = map[string]string{
	"Manifest": "the top level", "Health": "health", "HTTPProbe": "health.http",
	"Resources": "resources", "Volume": "volumes", "Capabilities": "capabilities",
	"networkFields": "capabilities.network", "NetAllow": "capabilities.network.allow",
}

// ParseYAML reads a tern.yaml strictly: an unknown key is an error that names it,
// and the result is validated.
func ParseYAML(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadManifest, len(data), MaxManifestSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty", ErrBadManifest)
		}
		msg := yamlUnknownField.ReplaceAllStringFunc(err.Error(), func(s string) string {
			p := yamlUnknownField.FindStringSubmatch(s)
			return fmt.Sprintf("line %s: unknown key %q in %s", p[1], p[2], sectionOf[p[3]])
		})
		msg = strings.TrimPrefix(strings.ReplaceAll(msg, "\n  ", "; "), "yaml: unmarshal errors:; ")
		return nil, fmt.Errorf("%w: %s", ErrBadManifest, msg)
	}
	var extra yaml.Node
	if dec.Decode(&extra) == nil {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrBadManifest)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// ParseJSON reads a manifest as it is stored in a package, strictly, and validates it.
func ParseJSON(data []byte) (*Manifest, error) {
	var m Manifest
	if err := strictJSON(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// strictJSON decodes exactly one JSON value with no unknown fields.
func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
