package device

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// BenchmarkTerndSize reports what the stripped ternd binary is made of: it builds
// ternd with symbols and sums the sizes of its symbols by origin, as `go tool nm
// -size` lists them, counting only those in sections that take room in the file
// (not bss). The binary is about 1.7x their sum: the rest is the tables that
// describe functions and types, which grow with the code. It also builds
// the stripped binary as the Makefile does and with -tags nethttpomithttp2 (no
// HTTP/2 in net/http; ternd speaks HTTP/1.1 to its server and on its socket).
func BenchmarkTerndSize(b *testing.B) {
	build(b) // skips without root, like the other device benchmarks
	dir := b.TempDir()
	for b.Loop() {
	}
	goBuild := func(out string, args ...string) int64 {
		cmd := exec.Command("go", append(append([]string{"build", "-trimpath"}, args...), "-o", out, "./cmd/ternd")...)
		cmd.Dir, cmd.Env = "../..", append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, o)
		}
		fi, _ := os.Stat(out)
		return fi.Size()
	}
	stripped := goBuild(filepath.Join(dir, "ternd"), "-ldflags=-s -w")
	noH2 := goBuild(filepath.Join(dir, "ternd-noh2"), "-ldflags=-s -w", "-tags=nethttpomithttp2")
	goBuild(filepath.Join(dir, "ternd-syms"))
	groups, total, err := symbolGroups(filepath.Join(dir, "ternd-syms"))
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("ternd stripped: %d bytes (%.2f MB, %.2f MiB); with -tags nethttpomithttp2: %d bytes (%.2f MB)",
		stripped, float64(stripped)/1e6, float64(stripped)/(1<<20), noH2, float64(noH2)/1e6)
	b.Logf("symbol bytes by origin (%.2f MB in all):", float64(total)/1e6)
	for _, g := range groups {
		b.Logf("  %-40s %8.0f KB %5.1f%%", g.name, float64(g.size)/1e3, float64(g.size)/float64(total)*100)
	}
	b.ReportMetric(float64(stripped)/1e6, "MB-ternd")
	b.ReportMetric(float64(noH2)/1e6, "MB-ternd-nethttpomithttp2")
	b.ReportMetric(0, "ns/op")
}

type sizeGroup struct {
	name string
	size int64
}

// origins map symbol package prefixes to the feature that pulls them in.
var origins = []struct{ prefix, name string }{
	{"github.com/tern-iot/tern/", "tern (internal/...)"},
	{"github.com/pion/", "mDNS (pion/mdns, x/net ipv4/ipv6/bpf)"},
	{"github.com/eclipse/paho", "MQTT (paho, autopaho, websocket)"},
	{"github.com/gorilla/websocket", "MQTT (paho, autopaho, websocket)"},
	{"golang.org/x/net/proxy", "MQTT (paho, autopaho, websocket)"},
	{"golang.org/x/net/internal/socks", "MQTT (paho, autopaho, websocket)"},
	{"golang.org/x/net/", "mDNS (pion/mdns, x/net ipv4/ipv6/bpf)"},
	{"golang.org/x/sys/", "golang.org/x/sys"},
	{"gopkg.in/yaml", "YAML (yaml.v3)"},
	{"github.com/klauspost/compress", "zstd, gzip (klauspost/compress)"},
	{"go.etcd.io/bbolt", "state store (bbolt)"},
	{"github.com/google/go-containerregistry", "OCI images (go-containerregistry)"},
	{"regexp", "regexp"},
	{"crypto/", "std crypto, TLS, x509"},
	{"vendor/golang.org/x/crypto", "std crypto, TLS, x509"},
	{"net/http", "std net/http (with HTTP/2)"},
	{"vendor/golang.org/x/net", "std net/http (with HTTP/2)"},
	{"vendor/golang.org/x/text", "std net/http (with HTTP/2)"},
}

// symbolGroups sums the sizes of the symbols that occupy the file (text, data,
// read-only data; not bss) by origin.
func symbolGroups(path string) ([]sizeGroup, int64, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return nil, 0, err
	}
	sums := map[string]int64{}
	var total int64
	for _, sym := range syms {
		i := int(sym.Section)
		if i <= 0 || i >= len(f.Sections) || f.Sections[i].Type == elf.SHT_NOBITS || sym.Size == 0 {
			continue
		}
		name := "std (runtime, reflect, fmt, os, net, ...)"
		for _, o := range origins {
			if strings.HasPrefix(sym.Name, o.prefix) {
				name = o.name
				break
			}
		}
		if strings.HasPrefix(sym.Name, "go:") || strings.HasPrefix(sym.Name, "type:") {
			name = "type and function metadata"
		}
		sums[name] += int64(sym.Size)
		total += int64(sym.Size)
	}
	var out []sizeGroup
	for k, v := range sums {
		out = append(out, sizeGroup{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].size > out[j].size })
	return out, total, nil
}
