package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/tern-iot/tern/internal/trust"
)

// Entries of a package built by validPackage, in package order.
const (
	iFormat = iota
	iManifest
	iSig
	iConfig
	iLayer
)

// signEnvelope returns manifest.sig content over payload by keys.
func signEnvelope(t testing.TB, payloadType string, payload []byte, keys ...trust.PrivateKey) []byte {
	t.Helper()
	env, err := trust.Sign(payloadType, payload, keys...)
	if err != nil {
		t.Fatal(err)
	}
	data, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestReadAcceptsABuiltPackage(t *testing.T) {
	key := testKey(1)
	data := validPackage(t, key)
	blobs := map[string][]byte{}
	sink := sinkFunc(func(d Descriptor, r io.Reader) error {
		b, err := io.ReadAll(r)
		blobs[d.Digest] = b
		return err
	})
	p, err := Read(bytes.NewReader(data), trusting(key), sink)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.SignedBy) != 1 || p.SignedBy[0] != key.ID {
		t.Fatalf("SignedBy = %v, want [%s]", p.SignedBy, key.ID)
	}
	app := p.Manifest.App
	if app.Name != "demo" || app.Version != "1.0.0" || app.Restart != RestartAlways || app.Capabilities.Network.Mode != NetworkNone {
		t.Fatalf("manifest not resolved with defaults: %+v", app)
	}
	if len(blobs) != 2 || len(p.Manifest.Image.Layers) != 1 {
		t.Fatalf("sink got %d blobs for %d layers", len(blobs), len(p.Manifest.Image.Layers))
	}
	layer := p.Manifest.Image.Layers[0]
	if layer.MediaType != MediaTypeLayerZstd {
		t.Fatalf("layer media type %q", layer.MediaType)
	}
	zr, err := zstd.NewReader(bytes.NewReader(blobs[layer.Digest]))
	if err != nil {
		t.Fatal(err)
	}
	defer zr.Close()
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if got := digestBytes(raw); got != p.Manifest.Image.DiffIDs[0] {
		t.Fatalf("layer diffID %s, manifest says %s", got, p.Manifest.Image.DiffIDs[0])
	}
	byName := map[string]tarEntry{}
	for _, e := range tarEntries(t, raw) {
		byName[e.name] = e
	}
	if e := byName["bin/sh"]; e.typeflag != '2' || e.linkname != "app" {
		t.Fatalf("bin/sh = %+v, want a symlink to app", e)
	}
	if e := byName["bin/app-hardlink"]; e.typeflag != '1' || e.linkname != "bin/app" {
		t.Fatalf("bin/app-hardlink = %+v, want a hard link to bin/app", e)
	}
	if e := byName["etc/app.conf"]; string(e.body) != "listen = :8080\n" {
		t.Fatalf("etc/app.conf = %q", e.body)
	}
}

type sinkFunc func(Descriptor, io.Reader) error

func (f sinkFunc) WriteBlob(d Descriptor, r io.Reader) error { return f(d, r) }

func TestReadRefusesBadPackagesWithTheirOwnError(t *testing.T) {
	key, other := testKey(1), testKey(2)
	good := tarEntries(t, validPackage(t, key))
	manifestJSON := good[iManifest].body
	// edit returns the package's entries changed by f.
	edit := func(f func(es []tarEntry) []tarEntry) func(*testing.T) []byte {
		return func(t *testing.T) []byte {
			es := make([]tarEntry, len(good))
			copy(es, good)
			return writeTar(t, f(es))
		}
	}
	replace := func(i int, body []byte) func(*testing.T) []byte {
		return edit(func(es []tarEntry) []tarEntry { es[i].body = body; return es })
	}
	raw := func(b []byte) func(*testing.T) []byte { return func(*testing.T) []byte { return b } }
	resigned := func(m []byte) []byte { return signEnvelope(t, PayloadType, m, key) }
	// resignedWith changes manifest.json and signs the result with the trusted key.
	resignedWith := func(f func(*PackageManifest)) func(*testing.T) []byte {
		var pm PackageManifest
		if err := json.Unmarshal(manifestJSON, &pm); err != nil {
			t.Fatal(err)
		}
		f(&pm)
		m, err := json.MarshalIndent(&pm, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		return edit(func(es []tarEntry) []tarEntry { es[1].body, es[2].body = m, resigned(m); return es })
	}

	cases := []struct {
		name string
		data func(*testing.T) []byte
		want []error // every one must match
	}{
		{"empty file", raw(nil), []error{ErrNotPackage, ErrTruncated}},
		{"text file", raw([]byte("hello, this is not a package\n")), []error{ErrNotPackage}},
		{"random bytes", raw(bytes.Repeat([]byte("\x8f\x13tern"), 700)), []error{ErrNotPackage}},
		{"only end-of-archive blocks", raw(make([]byte, 1024)), []error{ErrNotPackage, ErrTruncated}},
		{"wrong format line", replace(iFormat, []byte("tern-package 2\n")), []error{ErrUnsupportedFormat}},
		{"format line without newline", replace(iFormat, []byte("tern-package 1")), []error{ErrUnsupportedFormat}},
		{"oversized format entry", replace(iFormat, bytes.Repeat([]byte("x"), 200)), []error{ErrTooLarge}},
		{"no format entry", edit(func(es []tarEntry) []tarEntry { return es[1:] }), []error{ErrNotPackage, ErrEntryOrder}},
		{"unknown first entry", edit(func(es []tarEntry) []tarEntry {
			return append([]tarEntry{{name: "README"}}, es...)
		}), []error{ErrNotPackage, ErrUnknownEntry}},
		{"unknown entry before the signature", edit(func(es []tarEntry) []tarEntry {
			return append(es[:2:2], append([]tarEntry{{name: "notes.txt", body: []byte("hi")}}, es[2:]...)...)
		}), []error{ErrUnknownEntry}},
		{"blob not in the manifest", edit(func(es []tarEntry) []tarEntry {
			return append(es[:3:3], append([]tarEntry{{name: BlobPrefix + strings.Repeat("0", 64)}}, es[3:]...)...)
		}), []error{ErrUnknownEntry}},
		{"duplicate manifest.json", edit(func(es []tarEntry) []tarEntry {
			return append(es[:2:2], append([]tarEntry{es[1]}, es[2:]...)...)
		}), []error{ErrDuplicateEntry}},
		{"duplicate format entry", edit(func(es []tarEntry) []tarEntry {
			return append(es[:1:1], append([]tarEntry{es[0]}, es[1:]...)...)
		}), []error{ErrDuplicateEntry}},
		{"duplicate config blob", edit(func(es []tarEntry) []tarEntry {
			return []tarEntry{es[0], es[1], es[2], es[3], es[3], es[4]}
		}), []error{ErrDuplicateEntry}},
		{"manifest.sig before manifest.json", edit(func(es []tarEntry) []tarEntry {
			es[1], es[2] = es[2], es[1]
			return es
		}), []error{ErrEntryOrder}},
		{"blobs swapped", edit(func(es []tarEntry) []tarEntry {
			es[3], es[4] = es[4], es[3]
			return es
		}), []error{ErrEntryOrder}},
		{"blob before manifest.sig", edit(func(es []tarEntry) []tarEntry {
			return []tarEntry{es[0], es[1], es[3], es[2], es[4]}
		}), []error{ErrUnknownEntry}},
		{"extra entry after the last blob", edit(func(es []tarEntry) []tarEntry {
			return append(es, tarEntry{name: "extra", body: []byte("x")})
		}), []error{ErrUnknownEntry}},
		{"a blob again after the last blob", edit(func(es []tarEntry) []tarEntry { return append(es, es[4]) }), []error{ErrDuplicateEntry}},
		{"manifest.json again after the last blob", edit(func(es []tarEntry) []tarEntry { return append(es, es[1]) }), []error{ErrDuplicateEntry}},
		{"missing layer blob", edit(func(es []tarEntry) []tarEntry { return es[:4] }), []error{ErrMissingBlob, ErrTruncated}},
		{"no blobs", edit(func(es []tarEntry) []tarEntry { return es[:3] }), []error{ErrMissingBlob}},
		{"symlink named manifest.json", edit(func(es []tarEntry) []tarEntry {
			es[1] = tarEntry{name: EntryManifest, typeflag: '2', linkname: "/etc/passwd"}
			return es
		}), []error{ErrUnknownEntry}},
		{"directory named like a blob", edit(func(es []tarEntry) []tarEntry {
			es[3] = tarEntry{name: es[3].name, typeflag: '5'}
			return es
		}), []error{ErrUnknownEntry}},
		{"hard link as the layer", edit(func(es []tarEntry) []tarEntry {
			es[4] = tarEntry{name: es[4].name, typeflag: '1', linkname: es[3].name}
			return es
		}), []error{ErrUnknownEntry}},
		{"oversized manifest.json", replace(iManifest, bytes.Repeat([]byte(" "), MaxManifestSize+1)), []error{ErrTooLarge}},
		{"oversized manifest.sig", replace(iSig, bytes.Repeat([]byte(" "), MaxSigSize+1)), []error{ErrTooLarge}},
		{"layer larger in its tar header", edit(func(es []tarEntry) []tarEntry {
			es[4].body = append(bytes.Clone(es[4].body), 0)
			return es
		}), []error{ErrBlobSize}},
		{"layer smaller in its tar header", edit(func(es []tarEntry) []tarEntry {
			es[4].body = es[4].body[:len(es[4].body)-1]
			return es
		}), []error{ErrBlobSize}},
		{"config replaced, same size", edit(func(es []tarEntry) []tarEntry {
			es[3].body = bytes.Repeat([]byte(" "), len(es[3].body))
			return es
		}), []error{ErrBlobDigest}},
		{"manifest.json not JSON", replace(iManifest, []byte("name: demo\n")), []error{ErrBadManifest}},
		{"manifest.json of another format", resignedWith(func(pm *PackageManifest) { pm.Format = 2 }), []error{ErrUnsupportedFormat}},
		{"signed manifest without a command", resignedWith(func(pm *PackageManifest) { pm.App.Command = nil }), []error{ErrBadManifest}},
		{"signed manifest with a bad field", resignedWith(func(pm *PackageManifest) { pm.App.Capabilities.Linux = []string{"SYS_ADMIN"} }), []error{ErrForbiddenCapability}},
		{"signed manifest with no layers", resignedWith(func(pm *PackageManifest) { pm.Image.Layers, pm.Image.DiffIDs = nil, nil }), []error{ErrBadManifest}},
		{"signed manifest with a bad digest", resignedWith(func(pm *PackageManifest) { pm.Image.Layers[0].Digest = "sha256:../../etc" }), []error{ErrBadManifest}},
		{"signed manifest with a foreign layer type", resignedWith(func(pm *PackageManifest) {
			pm.Image.Layers[0].MediaType = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
		}), []error{ErrBadManifest}},
		{"manifest.sig not JSON", replace(iSig, []byte("signed, honest")), []error{ErrSignature, trust.ErrBadEnvelope}},
		{"no signatures", replace(iSig, signEnvelope(t, PayloadType, manifestJSON)), []error{ErrSignature, trust.ErrUnsigned}},
		{"foreign signature", replace(iSig, signEnvelope(t, PayloadType, manifestJSON, other)), []error{ErrSignature, trust.ErrUntrustedSigner}},
		{"signature over another manifest", replace(iSig, resigned(bytes.Replace(manifestJSON, []byte("demo"), []byte("evil"), 1))), []error{ErrSignature}},
		{"signature of another payload type", replace(iSig, signEnvelope(t, "application/json", manifestJSON, key)), []error{ErrSignature, trust.ErrBadEnvelope}},
		{"signature that does not verify", func(t *testing.T) []byte {
			env, err := trust.ParseEnvelope(good[iSig].body)
			if err != nil {
				t.Fatal(err)
			}
			env.Signatures[0].Sig[10] ^= 1
			sig, _ := env.Marshal()
			return replace(iSig, sig)(t)
		}, []error{ErrSignature, trust.ErrBadSignature}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sink := &recordingSink{}
			p, err := Read(bytes.NewReader(c.data(t)), trusting(key), sink)
			if err == nil {
				t.Fatalf("Read accepted the package: %+v", p.Manifest)
			}
			for _, want := range c.want {
				if !errors.Is(err, want) {
					t.Fatalf("err = %v, want %v", err, want)
				}
			}
		})
	}
}

func TestReadRequiresTheThreshold(t *testing.T) {
	k1, k2, k3 := testKey(1), testKey(2), testKey(3)
	data := validPackage(t, k1, k2)
	opts := trusting(k1, k2, k3)
	opts.Threshold = 2
	p, err := Read(bytes.NewReader(data), opts, Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.SignedBy) != 2 {
		t.Fatalf("SignedBy = %v", p.SignedBy)
	}
	opts.Threshold = 3
	if _, err := Read(bytes.NewReader(data), opts, Discard); !errors.Is(err, ErrSignature) || !errors.Is(err, trust.ErrThreshold) {
		t.Fatalf("err = %v, want ErrSignature wrapping trust.ErrThreshold", err)
	}
	opts = trusting(k1)
	opts.Threshold = 2
	if _, err := Read(bytes.NewReader(data), opts, Discard); !errors.Is(err, trust.ErrThreshold) {
		t.Fatalf("err = %v: a signature by an untrusted key counted toward the threshold", err)
	}
}

// TestReadRefusesAFlippedByteInEachPart flips one byte in the content of each entry
// of a file as built, the way a bad disk or a hostile mirror would.
func TestReadRefusesAFlippedByteInEachPart(t *testing.T) {
	key := testKey(1)
	data := validPackage(t, key)
	names, spans := entrySpans(t, data)
	if len(names) != 5 {
		t.Fatalf("package has entries %v", names)
	}
	nameValue := int64(bytes.Index(data[spans[EntryManifest].off:], []byte(`"name": "demo"`)) + len(`"name": "`))
	cases := []struct {
		part string
		off  int64 // inside the part's content
		want []error
	}{
		{EntryFormat, int64(len("tern-package ")), []error{ErrUnsupportedFormat}},
		{EntryManifest, nameValue, []error{ErrSignature}},
		{EntrySig, spans[EntrySig].size / 2, []error{ErrSignature}},
		{EntrySig, spans[EntrySig].size - 10, []error{ErrSignature}},
		{names[iConfig], 0, []error{ErrBlobDigest}},
		{names[iConfig], spans[names[iConfig]].size - 1, []error{ErrBlobDigest}},
		{names[iLayer], 0, []error{ErrBlobDigest}},
		{names[iLayer], spans[names[iLayer]].size / 2, []error{ErrBlobDigest}},
		{names[iLayer], spans[names[iLayer]].size - 1, []error{ErrBlobDigest}},
	}
	for _, c := range cases {
		sp := spans[c.part]
		_, err := Read(bytes.NewReader(flipByte(data, sp.off+c.off, 0x01)), trusting(key), Discard)
		for _, want := range c.want {
			if !errors.Is(err, want) {
				t.Errorf("byte %d of %s flipped: err = %v, want %v", c.off, c.part, err, want)
			}
		}
	}
}

// TestReadRefusesEveryFlippedByteOfTheSignedEntries flips, one at a time, every byte
// of the format line, manifest.json and manifest.sig, by two masks (a low bit, and
// the ASCII case bit that case-insensitive decoders forgive).
func TestReadRefusesEveryFlippedByteOfTheSignedEntries(t *testing.T) {
	key := testKey(1)
	data := validPackage(t, key)
	_, spans := entrySpans(t, data)
	for _, part := range []string{EntryFormat, EntryManifest, EntrySig} {
		sp := spans[part]
		for off := sp.off; off < sp.off+sp.size; off++ {
			for _, mask := range []byte{0x01, 0x20} {
				_, err := Read(bytes.NewReader(flipByte(data, off, mask)), trusting(key), Discard)
				if !errors.Is(err, ErrSignature) && !errors.Is(err, ErrBadManifest) && !errors.Is(err, ErrUnsupportedFormat) {
					t.Errorf("%s byte %d ^ %#x (%q): err = %v", part, off-sp.off, mask, data[off], err)
				}
			}
		}
	}
}

func TestReadNeverSucceedsOnATruncatedPackage(t *testing.T) {
	key := testKey(1)
	data := validPackage(t, key)
	cuts := map[int]bool{}
	for n := 0; n < len(data); n += 256 { // every block boundary, and every block's middle
		cuts[n] = true
	}
	_, spans := entrySpans(t, data)
	for _, sp := range spans {
		for _, n := range []int64{sp.off - 1, sp.off + 1, sp.off + sp.size - 1, sp.off + sp.size, sp.off + sp.size + 1} {
			cuts[int(n)] = true
		}
	}
	for _, n := range []int{1, 100, 511, 513, len(data) - 1} {
		cuts[n] = true
	}
	for n := range cuts {
		_, err := Read(bytes.NewReader(data[:n]), trusting(key), Discard)
		if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrMissingBlob) {
			t.Errorf("cut at %d of %d: err = %v, want ErrTruncated or ErrMissingBlob", n, len(data), err)
		}
	}
}

// TestReadWritesNothingBeforeTheSignatureIsVerified: for every way the signature
// can fail, the sink is never called.
func TestReadWritesNothingBeforeTheSignatureIsVerified(t *testing.T) {
	key, other := testKey(1), testKey(2)
	good := tarEntries(t, validPackage(t, key))
	tampered := bytes.Replace(good[iManifest].body, []byte(`"demo"`), []byte(`"evil"`), 1)
	cases := map[string][]tarEntry{
		"foreign signature":     {good[0], good[1], {name: EntrySig, body: signEnvelope(t, PayloadType, good[1].body, other)}, good[3], good[4]},
		"unsigned":              {good[0], good[1], {name: EntrySig, body: signEnvelope(t, PayloadType, good[1].body)}, good[3], good[4]},
		"manifest.json changed": {good[0], {name: EntryManifest, body: tampered}, good[2], good[3], good[4]},
		"signer changed the manifest": {good[0], {name: EntryManifest, body: tampered},
			{name: EntrySig, body: signEnvelope(t, PayloadType, tampered, other)}, good[3], good[4]},
	}
	for name, es := range cases {
		t.Run(name, func(t *testing.T) {
			sink := &recordingSink{}
			_, err := Read(bytes.NewReader(writeTar(t, es)), trusting(key), sink)
			if !errors.Is(err, ErrSignature) {
				t.Fatalf("err = %v, want ErrSignature", err)
			}
			if len(sink.calls) != 0 {
				t.Fatalf("the sink was handed %d blobs of an unverified package", len(sink.calls))
			}
		})
	}
}

// TestReadReportsABadBlobInPlaceOfEOF: a sink that reads a blob to its end sees the
// digest mismatch as the error that ends it, never a clean io.EOF.
func TestReadReportsABadBlobInPlaceOfEOF(t *testing.T) {
	key := testKey(1)
	data := validPackage(t, key)
	names, spans := entrySpans(t, data)
	layer := spans[names[iLayer]]
	bad := flipByte(data, layer.off+layer.size/2, 0x80)

	sink := &recordingSink{}
	_, err := Read(bytes.NewReader(bad), trusting(key), sink)
	if !errors.Is(err, ErrBlobDigest) {
		t.Fatalf("err = %v, want ErrBlobDigest", err)
	}
	if len(sink.calls) != 2 || sink.errs[0] != nil {
		t.Fatalf("sink calls %v, errs %v: want the good config, then the layer", sink.calls, sink.errs)
	}
	if !errors.Is(sink.errs[1], ErrBlobDigest) {
		t.Fatalf("the sink's read of the bad layer ended with %v, want ErrBlobDigest", sink.errs[1])
	}
	if sink.bytes != spans[names[iConfig]].size+layer.size {
		t.Fatalf("sink read %d bytes", sink.bytes)
	}
}

func TestReadChecksBlobsTheSinkDidNotRead(t *testing.T) {
	key := testKey(1)
	data := validPackage(t, key)
	names, spans := entrySpans(t, data)
	bad := flipByte(data, spans[names[iLayer]].off+3, 0x01)
	lazy := sinkFunc(func(Descriptor, io.Reader) error { return nil }) // "already have it"
	if _, err := Read(bytes.NewReader(data), trusting(key), lazy); err != nil {
		t.Fatalf("good package: %v", err)
	}
	if _, err := Read(bytes.NewReader(bad), trusting(key), lazy); !errors.Is(err, ErrBlobDigest) {
		t.Fatalf("err = %v, want ErrBlobDigest", err)
	}
	swallow := sinkFunc(func(_ Descriptor, r io.Reader) error { io.Copy(io.Discard, r); return nil })
	if _, err := Read(bytes.NewReader(bad), trusting(key), swallow); !errors.Is(err, ErrBlobDigest) {
		t.Fatalf("a sink that ignored the error: err = %v, want ErrBlobDigest", err)
	}
}

func TestReadReturnsTheSinksError(t *testing.T) {
	key := testKey(1)
	diskFull := errors.New("disk full")
	sink := sinkFunc(func(Descriptor, io.Reader) error { return diskFull })
	if _, err := Read(bytes.NewReader(validPackage(t, key)), trusting(key), sink); !errors.Is(err, diskFull) {
		t.Fatalf("err = %v, want the sink's", err)
	}
}

func TestReadWithSkipSignaturesStillChecksStructureAndDigests(t *testing.T) {
	key := testKey(1)
	data := validPackage(t, key)
	skip := ReadOptions{SkipSignatures: true}
	p, err := Read(bytes.NewReader(data), skip, Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.SignedBy) != 0 {
		t.Fatalf("SignedBy = %v without checking signatures", p.SignedBy)
	}
	names, spans := entrySpans(t, data)
	if _, err := Read(bytes.NewReader(flipByte(data, spans[names[iLayer]].off, 1)), skip, Discard); !errors.Is(err, ErrBlobDigest) {
		t.Fatalf("err = %v, want ErrBlobDigest", err)
	}
	es := tarEntries(t, data)
	es[iSig].body = signEnvelope(t, PayloadType, es[iManifest].body)
	if _, err := Read(bytes.NewReader(writeTar(t, es)), skip, Discard); !errors.Is(err, ErrSignature) {
		t.Fatalf("unsigned package: err = %v, want ErrSignature", err)
	}
}

func TestReadAsksAdmitAfterVerifyingAndBeforeAnyBlob(t *testing.T) {
	key, other := testKey(1), testKey(2)
	data := validPackage(t, key)
	held := errors.New("device /dev/ttyS1 is held by another app")
	var asked []string
	opts := trusting(key)
	opts.Admit = func(pm *PackageManifest) error { asked = append(asked, pm.App.Name); return held }
	sink := &recordingSink{}
	if _, err := Read(bytes.NewReader(data), opts, sink); !errors.Is(err, held) {
		t.Fatalf("err = %v, want Admit's", err)
	}
	if len(asked) != 1 || asked[0] != "demo" || len(sink.calls) != 0 {
		t.Fatalf("Admit asked about %v, sink got %d blobs", asked, len(sink.calls))
	}
	asked = nil
	opts.Keys = trusting(other).Keys
	if _, err := Read(bytes.NewReader(data), opts, sink); !errors.Is(err, ErrSignature) || len(asked) != 0 {
		t.Fatalf("err = %v, Admit asked %v: Admit must only see verified manifests", err, asked)
	}
	opts = trusting(key)
	opts.Admit = func(*PackageManifest) error { return nil }
	if _, err := Read(bytes.NewReader(data), opts, sink); err != nil || len(sink.calls) != 2 {
		t.Fatalf("admitted: err = %v, %d blobs", err, len(sink.calls))
	}
}
