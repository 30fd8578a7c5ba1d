package app

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tern-iot/tern/internal/trust"
)

// writePackageFile writes data to a .tern file in a fresh directory.
func writePackageFile(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "demo.tern")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// onlyFile fails the test if dir holds anything but the file at path (a temp file
// left behind by a failed rewrite, say).
func onlyFile(t *testing.T, path string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != filepath.Base(path) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("directory holds %v, want only %s", names, filepath.Base(path))
	}
}

func readPackageFile(t *testing.T, path string, opts ReadOptions) (*Package, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Read(f, opts, Discard)
}

func TestResignAddsASignatureThatMeetsAThresholdOfTwo(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	path := writePackageFile(t, validPackage(t, k1))
	both := trusting(k1, k2)
	both.Threshold = 2
	if _, err := readPackageFile(t, path, both); !errors.Is(err, trust.ErrThreshold) {
		t.Fatalf("before Resign: err = %v, want ErrThreshold", err)
	}
	p, err := Resign(path, k2)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Envelope.Signatures) != 2 {
		t.Fatalf("Resign returned %d signatures", len(p.Envelope.Signatures))
	}
	got, err := readPackageFile(t, path, both)
	if err != nil {
		t.Fatalf("after Resign: %v", err)
	}
	slices.Sort(got.SignedBy)
	want := []string{k1.ID, k2.ID}
	slices.Sort(want)
	if !slices.Equal(got.SignedBy, want) {
		t.Fatalf("SignedBy = %v, want %v", got.SignedBy, want)
	}
	onlyFile(t, path)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("resigned package mode %v, %v", fi.Mode(), err)
	}
}

func TestResignKeepsManifestAndBlobsByteForByte(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	orig := validPackage(t, k1)
	path := writePackageFile(t, orig)
	if _, err := Resign(path, k2); err != nil {
		t.Fatal(err)
	}
	after := tarEntries(t, readFile(t, path))
	before := tarEntries(t, orig)
	if len(after) != len(before) {
		t.Fatalf("%d entries became %d", len(before), len(after))
	}
	for i := range before {
		if i == iSig {
			continue
		}
		if after[i].name != before[i].name || !bytes.Equal(after[i].body, before[i].body) {
			t.Fatalf("entry %d (%s) changed", i, before[i].name)
		}
	}
}

func TestResignRefusesTheSameKeyTwice(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	orig := validPackage(t, k1)
	path := writePackageFile(t, orig)
	for _, keys := range [][]trust.PrivateKey{{k1}, {k2, k2}} {
		if _, err := Resign(path, keys...); err == nil || !strings.Contains(err.Error(), "already signed") {
			t.Fatalf("Resign by %d keys: err = %v, want already signed", len(keys), err)
		}
		if !bytes.Equal(readFile(t, path), orig) {
			t.Fatal("a refused Resign changed the package")
		}
		onlyFile(t, path)
	}
}

func TestResignRefusesATamperedPackageAndLeavesItAlone(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	data := validPackage(t, k1)
	names, spans := entrySpans(t, data)
	cases := map[string][]byte{
		"layer byte flipped":    flipByte(data, spans[names[iLayer]].off+7, 0x01),
		"manifest byte flipped": flipByte(data, spans[EntryManifest].off+20, 0x01),
		"truncated":             data[:len(data)-700],
		"not a package":         []byte("not a package at all"),
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			path := writePackageFile(t, bad)
			if _, err := Resign(path, k2); err == nil {
				t.Fatal("Resign signed a bad package")
			}
			if !bytes.Equal(readFile(t, path), bad) {
				t.Fatal("a refused Resign changed the file")
			}
			onlyFile(t, path)
		})
	}
}

func TestInspectFileDescribesThePackageAndItsSigners(t *testing.T) {
	k1, k2 := testKey(1), testKey(2)
	data := validPackage(t, k1, k2)
	path := writePackageFile(t, data)
	info, err := InspectFile(path, []trust.PublicKey{k1.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if info.App.Name != "demo" || len(info.Image.Layers) != 1 || len(info.Signatures) != 2 {
		t.Fatalf("info = %+v", info)
	}
	for _, s := range info.Signatures {
		if s.Trusted == nil || *s.Trusted != (s.KeyID == k1.ID) {
			t.Fatalf("signature %s marked trusted=%v", trust.ShortID(s.KeyID), s.Trusted)
		}
	}
	var out bytes.Buffer
	if err := info.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"demo 1.0.0", "/bin/app --serve", "Network:", "none", trust.ShortID(k1.ID) + "  trusted", trust.ShortID(k2.ID) + "  untrusted"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("inspect text lacks %q:\n%s", want, out.String())
		}
	}
	names, spans := entrySpans(t, data)
	bad := writePackageFile(t, flipByte(data, spans[names[iLayer]].off, 0x01))
	if _, err := InspectFile(bad, nil); err == nil {
		t.Fatal("InspectFile described a package whose blob was changed")
	}
}
