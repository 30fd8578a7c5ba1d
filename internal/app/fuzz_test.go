package app

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"testing"
)

// Fuzz targets for every parser of outside input: tern.yaml, manifest.json and
// the package reader. Run one with
//
//	go test -run='^$' -fuzz=FuzzReadPackage -fuzztime=20s ./internal/app/

var yamlSeeds = []string{
	minimalYAML,
	"name: a\nversion: 0.0.1-rc.1+b\nhealth: {exec: [/ok], interval: 1s, timeout: 1s}\ncapabilities: {network: host}\n",
	"name: a\nversion: 1.0.0\ncapabilities: {network: {allow: [{host: 10.0.0.0/8, port: 53, proto: udp}], listen: [1]}}\n",
	"name: a\nversion: 1.0.0\nresources: {memory: 1Gi, cpu: 1e2, pids: 1}\nvolumes: [{name: v, path: /v, size: '1'}]\n",
	"name: a\nversion: 1.0.0\ncapabilities: {linux: [cap_sys_admin]}\n",
	"name: a\nversion: 1.0.0\nnmae: x\n",
	"{name: a, version: 1.0.0, probation: 1h, stop_timeout: 1ms, after: [b, c]}\n",
}

// checkManifestRoundTrip asserts that a manifest a parser accepted validates again
// and survives manifest.json unchanged.
func checkManifestRoundTrip(t *testing.T, m *Manifest) {
	if err := m.Validate(); err != nil {
		t.Fatalf("a parsed manifest does not validate: %v", err)
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("a parsed manifest does not encode: %v", err)
	}
	back, err := ParseJSON(data)
	if err != nil {
		t.Fatalf("ParseJSON refuses the JSON of a parsed manifest: %v\n%s", err, data)
	}
	// The first trip may drop empty lists ("devices: []"); after it, JSON is a
	// fixed point.
	once, err := json.Marshal(back)
	if err != nil {
		t.Fatal(err)
	}
	back2, err := ParseJSON(once)
	if err != nil {
		t.Fatalf("ParseJSON refuses its own output: %v\n%s", err, once)
	}
	if twice, err := json.Marshal(back2); err != nil || !bytes.Equal(twice, once) {
		t.Fatalf("JSON round trip changed the manifest:\n%s\n%s (%v)", once, twice, err)
	}
	// What a build does to it must also validate.
	back.ApplyDefaults()
	if err := back.Validate(); err != nil {
		t.Fatalf("the manifest with defaults does not validate: %v", err)
	}
}

func FuzzParseYAML(f *testing.F) {
	for _, path := range exampleManifests {
		f.Add(readFile(f, path))
	}
	for _, s := range yamlSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseYAML(data)
		if err != nil {
			return
		}
		checkManifestRoundTrip(t, m)
	})
}

func FuzzParseJSON(f *testing.F) {
	for _, path := range exampleManifests {
		m, err := ParseYAML(readFile(f, path))
		if err != nil {
			f.Fatal(err)
		}
		data, _ := json.Marshal(m)
		f.Add(data)
		m.ApplyDefaults()
		data, _ = json.MarshalIndent(m, "", "  ")
		f.Add(data)
	}
	f.Add([]byte(`{"name":"a","version":"1.0.0","capabilities":{"network":{"allow":[{"host":"a.b","port":1}]}}}`))
	f.Add([]byte(`{"name":"a","version":"1.0.0","health":{"tcp":1,"interval":"1s"},"resources":{"cpu":0.5,"memory":4194304}}`))
	f.Add([]byte(`{"name":"a","version":"1.0.0","capabilities":{"network":null}} `))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseJSON(data)
		if err != nil {
			return
		}
		checkManifestRoundTrip(t, m)
	})
}

// hashingSink checks, independently of the reader, that every blob it is handed
// hashes to its descriptor when the reader says it ended cleanly.
type hashingSink struct{ t *testing.T }

func (s hashingSink) WriteBlob(d Descriptor, r io.Reader) error {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err == nil && (n != d.Size || "sha256:"+hex.EncodeToString(h.Sum(nil)) != d.Digest) {
		s.t.Fatalf("blob %s ended cleanly after %d bytes that do not match it", d.Digest, n)
	}
	return err
}

func FuzzReadPackage(f *testing.F) {
	key := testKey(1) // fixed: only packages signed by it may be accepted
	rootfs := f.TempDir()
	writeRootfs(f, rootfs)
	signed := map[string]bool{}
	for _, algo := range []string{CompressZstd, CompressGzip} {
		data := buildBytes(f, rootfs, minimalManifest(f), algo, key)
		signed[string(tarEntries(f, data)[iManifest].body)] = true
		f.Add(data)
		for _, n := range []int{0, 512, 1024, 1536, len(data) / 2, len(data) - 1024, len(data) - 1} {
			f.Add(data[:n])
		}
		_, spans := entrySpans(f, data)
		f.Add(flipByte(data, spans[EntrySig].off+30, 1))
	}
	foreign := buildBytes(f, rootfs, minimalManifest(f), CompressZstd, testKey(2))
	f.Add(foreign)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Read(bytes.NewReader(data), trusting(key), hashingSink{t})
		if err == nil {
			if !signed[string(p.ManifestJSON)] {
				t.Fatalf("Read accepted a manifest the test key never signed:\n%s", p.ManifestJSON)
			}
			if len(p.SignedBy) != 1 || p.SignedBy[0] != key.ID {
				t.Fatalf("SignedBy = %v", p.SignedBy)
			}
		}
		// The unverified path (inspect) must not panic either.
		Read(bytes.NewReader(data), ReadOptions{SkipSignatures: true}, hashingSink{t})
	})
}
