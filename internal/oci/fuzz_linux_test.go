//go:build linux

package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"flag"
	"os"
	"strings"
	"testing"
)

// FuzzUnpack feeds arbitrary bytes to Unpack as a tar stream. Whatever the
// input, Unpack must not panic and must not write outside its destination.
// With script set, the bytes are first turned into a tar by scriptTar, so
// that the fuzzer explores combinations of hostile entries instead of
// spending its time forging tar checksums. The seeds are hostile layers.
func FuzzUnpack(f *testing.F) {
	requireRoot(f)
	seeds := [][]entry{
		{dirEntry("./"), regEntry("etc/passwd", "root:x:0:0"), symlinkEntry("bin", "usr/bin"), hardlinkEntry("etc/pw", "etc/passwd")},
		{symlinkEntry("evil", "/"), regEntry("evil/"+fuzzCanary+"/pwned", "x"), regEntry("evil/etc/"+fuzzCanary, "x")},
		{symlinkEntry("evil", "../outside"), regEntry("evil/pwned", "x"), hardlinkEntry("h", "evil/sentinel")},
		{symlinkEntry("a", "b"), symlinkEntry("b", "../a/.."), dirEntry("a/c/"), regEntry("a/c/d", "x")},
		{dirEntry("d/"), symlinkEntry("d", ".."), regEntry("d/pwned", "x"), regEntry("d/.wh.outside", "")},
		{regEntry("x", "x"), regEntry(".wh.x", ""), regEntry("o/.wh..wh..opq", ""), regEntry(".wh...", "")},
		{regEntry("../pwned", "x"), hardlinkEntry("h", "../outside/sentinel")},
		{entry{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "null", Devmajor: 1, Devminor: 3}}},
	}
	for i, s := range seeds {
		// Without the 1 KiB end-of-archive trailer, which Unpack does not
		// need: smaller seeds make the fuzzer's minimization much faster.
		layer := buildTar(f, s...)
		f.Add(layer[:len(layer)-1024], i%2 == 1, false)
	}
	scripts := []string{
		"2evil|/\n0evil/etc/" + fuzzCanary + "|pwned",
		"2up|../outside\n0up/pwned|x\n3h|up/sentinel\n0.wh.up|",
		"0x|x\n0.wh.x|\n1d/\n0d/.wh..wh..opq|\n0d/y|y\n0.wh..|",
		"2a|b\n2b|a\n0a/x|x\n2c|c/d\n0c/e|x",
		"1d/\n2d|..\n0d/pwned|x\n2l|/../" + fuzzCanary + "\n1l/n/",
	}
	for i, s := range scripts {
		f.Add([]byte(s), i%2 == 0, true)
	}
	// One sandbox per fuzzing process, emptied after every input: a fresh
	// t.TempDir per input would make each run several times slower.
	s := newSandbox(f)
	f.Fuzz(func(t *testing.T, data []byte, overlay, script bool) {
		defer func() {
			assertAbsent(t, "/"+fuzzCanary)
			assertAbsent(t, "/etc/"+fuzzCanary)
			if err := os.RemoveAll(s.dst); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(s.dst, 0o755); err != nil {
				t.Fatal(err)
			}
		}()
		layer := data
		if script {
			layer = scriptTar(data)
		}
		opts := Options{Limits: Limits{MaxEntries: 64, MaxBytes: 1 << 20, MaxPathLen: 512}}
		if overlay {
			opts.Whiteouts = WhiteoutOverlay
		}
		Unpack(context.Background(), s.dst, bytes.NewReader(layer), opts)
		s.assertContained(t)
	})
}

// fuzzCanary is the name the seeds try to create at "/" and "/etc" through
// symlinks out of the root; FuzzUnpack checks that it never appears there.
const fuzzCanary = "tern-oci-fuzz-escape"

// scriptTypes are the entry types a scriptTar line can ask for, by its first
// byte modulo their number: '0' regular file, '1' directory, '2' symlink,
// '3' hardlink, '4' character device, '5' fifo.
var scriptTypes = []byte{tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeFifo}

// scriptTar builds a valid tar from a compact script, one entry per line:
// a type byte, the name, "|", then the link target or the file's contents.
// Lines archive/tar cannot encode are skipped.
func scriptTar(script []byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for line := range bytes.SplitSeq(script, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		typ := scriptTypes[int(line[0])%len(scriptTypes)]
		name, rest, _ := strings.Cut(string(line[1:]), "|")
		hdr := &tar.Header{Typeflag: typ, Name: name, Mode: 0o755, ModTime: testTime}
		switch typ {
		case tar.TypeReg:
			hdr.Size = int64(len(rest))
		case tar.TypeSymlink, tar.TypeLink:
			hdr.Linkname = rest
		}
		if tw.WriteHeader(hdr) != nil {
			continue
		}
		if typ == tar.TypeReg {
			tw.Write([]byte(rest))
		}
	}
	tw.Close()
	return buf.Bytes()
}

// TestMain lowers the fuzzer's default minimization time from 60s to 2s. Every
// tar is at least a few 512-byte blocks, and minimizing inputs that long takes
// the whole minute for each input that finds new coverage, so a short
// -fuzztime run would do nothing but minimize. An explicit
// -test.fuzzminimizetime still wins.
func TestMain(m *testing.M) {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.fuzzminimizetime" })
	if !explicit {
		if err := flag.Set("test.fuzzminimizetime", "2s"); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}
