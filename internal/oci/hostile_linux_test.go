//go:build linux

package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func TestCleanNameRejectsUnsafeNames(t *testing.T) {
	for _, name := range []string{"../x", "a/../../x", "a/../b", "./../x", "..", "/abs", "/etc/passwd", "a\x00b"} {
		if _, err := cleanName(name); !errors.Is(err, ErrUnsafePath) {
			t.Errorf("cleanName(%q) = %v, want ErrUnsafePath", name, err)
		}
	}
	for name, want := range map[string]string{"": ".", ".": ".", "./": ".", "./a//b/": "a/b", "a/./b": "a/b", "..a/b..": "..a/b.."} {
		if got, err := cleanName(name); err != nil || got != want {
			t.Errorf("cleanName(%q) = %q, %v, want %q", name, got, err, want)
		}
	}
}

func TestUnpackRejectsPathTraversal(t *testing.T) {
	for _, name := range []string{"../x", "a/../../x", "../outside/sentinel", "/abs", "./../../x"} {
		t.Run(strings.ReplaceAll(name, "/", "_"), func(t *testing.T) {
			s := newSandbox(t)
			for _, e := range []entry{regEntry(name, "pwned"), dirEntry(name), symlinkEntry(name, "/")} {
				_, err := unpackEntries(t, s.dst, Options{}, e)
				if !errors.Is(err, ErrUnsafePath) {
					t.Errorf("type %q: err = %v, want ErrUnsafePath", e.hdr.Typeflag, err)
				}
			}
			s.assertContained(t)
			assertAbsent(t, filepath.Join(s.tmp, "x"))
		})
	}
}

// TestUnpackConfinesWritesThroughSymlinks writes through symlinks that point
// out of dst: each write must either be refused or land inside dst, where the
// symlink resolves when dst is the root.
func TestUnpackConfinesWritesThroughSymlinks(t *testing.T) {
	unique := uniqueName(t)
	cases := []struct {
		name    string
		entries func(s sandbox) []entry
		want    func(s sandbox) string // where the file must land, relative to dst
		escape  string                 // where a broken unpacker would write, absolute
	}{
		{
			name:    "AbsoluteToRoot",
			entries: func(s sandbox) []entry { return []entry{symlinkEntry("evil", "/"), regEntry("evil/etc/"+unique, "x")} },
			want:    func(s sandbox) string { return "etc/" + unique },
			escape:  "/etc/" + unique,
		},
		{
			name:    "AbsoluteToOutsideDir",
			entries: func(s sandbox) []entry { return []entry{symlinkEntry("evil", s.outside), regEntry("evil/pwned", "x")} },
			want:    func(s sandbox) string { return s.outside + "/pwned" },
		},
		{
			name: "RelativeUpToRoot",
			entries: func(s sandbox) []entry {
				return []entry{symlinkEntry("evil", "../../../../../../.."), regEntry("evil/etc/"+unique, "x")}
			},
			want:   func(s sandbox) string { return "etc/" + unique },
			escape: "/etc/" + unique,
		},
		{
			name: "RelativeToSiblingDir",
			entries: func(s sandbox) []entry {
				return []entry{dirEntry("a/"), symlinkEntry("a/up", "../../outside"), regEntry("a/up/pwned", "x")}
			},
			want: func(s sandbox) string { return "outside/pwned" },
		},
		{
			name: "AbsoluteChain",
			entries: func(s sandbox) []entry {
				return []entry{symlinkEntry("l1", "l2"), symlinkEntry("l2", "/l3"), symlinkEntry("l3", s.outside), regEntry("l1/pwned", "x")}
			},
			want: func(s sandbox) string { return s.outside + "/pwned" },
		},
		{
			name: "RelativeChain",
			entries: func(s sandbox) []entry {
				return []entry{symlinkEntry("l1", "sub/l2"), symlinkEntry("sub/l2", "../l3"), symlinkEntry("l3", "../outside"), regEntry("l1/pwned", "x")}
			},
			want: func(s sandbox) string { return "outside/pwned" },
		},
		{
			name: "ParentReplacedBySymlink",
			entries: func(s sandbox) []entry {
				return []entry{dirEntry("d/"), regEntry("d/a", "a"), symlinkEntry("d", "../outside"), regEntry("d/pwned", "x")}
			},
			want: func(s sandbox) string { return "outside/pwned" },
		},
		{
			name: "DirEntryThroughSymlink",
			entries: func(s sandbox) []entry {
				return []entry{symlinkEntry("evil", s.outside), dirEntry("evil/newdir/"), regEntry("evil/newdir/pwned", "x")}
			},
			want: func(s sandbox) string { return s.outside + "/newdir/pwned" },
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSandbox(t)
			if c.escape != "" {
				t.Cleanup(func() { os.Remove(c.escape) })
			}
			want := filepath.Join(s.dst, c.want(s))
			_, err := unpackEntries(t, s.dst, Options{}, c.entries(s)...)
			if err != nil {
				t.Logf("refused: %v", err)
			} else if got, err := os.ReadFile(want); err != nil || string(got) != "x" {
				t.Errorf("%s = %q, %v; want the layer's file", want, got, err)
			}
			s.assertContained(t)
			if c.escape != "" {
				assertAbsent(t, c.escape)
			}
		})
	}
}

func TestUnpackRejectsSymlinkLoop(t *testing.T) {
	s := newSandbox(t)
	_, err := unpackEntries(t, s.dst, Options{}, symlinkEntry("a", "b"), symlinkEntry("b", "a"), regEntry("a/x", "x"))
	if !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("err = %v, want ErrUnsafePath", err)
	}
	s.assertContained(t)
}

func TestUnpackRejectsHardlinkEscape(t *testing.T) {
	cases := []struct {
		name    string
		entries func(s sandbox) []entry
		wantErr error
	}{
		{"DotDotTarget", func(s sandbox) []entry { return []entry{hardlinkEntry("x", "../outside/sentinel")} }, ErrUnsafePath},
		{"NestedDotDotTarget", func(s sandbox) []entry { return []entry{hardlinkEntry("x", "a/../../outside/sentinel")} }, ErrUnsafePath},
		{"AbsoluteTarget", func(s sandbox) []entry { return []entry{hardlinkEntry("x", "/etc/passwd")} }, ErrUnsafePath},
		{"AbsoluteOutsideTarget", func(s sandbox) []entry { return []entry{hardlinkEntry("x", s.outside+"/sentinel")} }, ErrUnsafePath},
		{"ThroughAbsoluteSymlinkedParent", func(s sandbox) []entry {
			return []entry{symlinkEntry("evil", "/etc"), hardlinkEntry("x", "evil/passwd")}
		}, fs.ErrNotExist},
		{"ThroughSymlinkedParentToOutsideDir", func(s sandbox) []entry {
			return []entry{symlinkEntry("evil", s.outside), hardlinkEntry("x", "evil/sentinel")}
		}, fs.ErrNotExist},
		{"ThroughRelativeSymlinkedParent", func(s sandbox) []entry {
			return []entry{symlinkEntry("up", "../outside"), hardlinkEntry("x", "up/sentinel")}
		}, fs.ErrNotExist},
		{"ToSymlinkPointingOutside", func(s sandbox) []entry {
			// Linking the symlink itself is fine: it is data, resolved in the root.
			return []entry{symlinkEntry("ln", s.outside+"/sentinel"), hardlinkEntry("x", "ln"), regEntry("x", "overwrite")}
		}, nil},
	}
	passwd := lstat(t, "/etc/passwd")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := unpackEntries(t, s.dst, Options{}, c.entries(s)...)
			if c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Errorf("err = %v, want %v", err, c.wantErr)
			}
			if x, err := os.Lstat(filepath.Join(s.dst, "x")); err == nil && c.wantErr != nil {
				t.Errorf("x was created: %v", x.Mode())
			}
			s.assertContained(t)
			if got := lstat(t, "/etc/passwd"); got.Nlink != passwd.Nlink || got.Ctim != passwd.Ctim {
				t.Error("/etc/passwd gained a link")
			}
		})
	}
}

func TestUnpackRejectsHardlinkToMissingTarget(t *testing.T) {
	s := newSandbox(t)
	_, err := unpackEntries(t, s.dst, Options{}, hardlinkEntry("x", "nowhere"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want not exist", err)
	}
}

func TestUnpackRejectsSpecialFiles(t *testing.T) {
	for _, typ := range []byte{tar.TypeChar, tar.TypeBlock, tar.TypeFifo, 'V', 'X' + 1} {
		for _, mode := range []WhiteoutMode{WhiteoutApply, WhiteoutOverlay} {
			s := newSandbox(t)
			e := entry{hdr: tar.Header{Typeflag: typ, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}}
			_, err := unpackEntries(t, s.dst, Options{Whiteouts: mode}, e)
			if !errors.Is(err, ErrSpecialFile) {
				t.Errorf("type %q, mode %d: err = %v, want ErrSpecialFile", typ, mode, err)
			}
			if _, err := os.Lstat(filepath.Join(s.dst, "dev/null")); err == nil {
				t.Errorf("type %q, mode %d: dev/null was created", typ, mode)
			}
		}
	}
}

func TestUnpackRejectsDotWhiteouts(t *testing.T) {
	// ".wh.." names "." and ".wh..." names "..": removing either would take
	// the directory itself or its parent, which for the root is outside.
	for _, mode := range []WhiteoutMode{WhiteoutApply, WhiteoutOverlay} {
		for _, name := range []string{".wh..", ".wh...", "a/.wh..."} {
			s := newSandbox(t)
			mustUnpack(t, s.dst, Options{}, regEntry("a/keep", "keep"))
			_, err := unpackEntries(t, s.dst, Options{Whiteouts: mode}, regEntry(name, ""))
			if !errors.Is(err, ErrUnsafePath) {
				t.Errorf("%q, mode %d: err = %v, want ErrUnsafePath", name, mode, err)
			}
			if got := readFile(t, filepath.Join(s.dst, "a/keep")); got != "keep" {
				t.Errorf("%q: a/keep = %q", name, got)
			}
			s.assertContained(t)
		}
	}
}

func TestUnpackRejectsTooManyEntries(t *testing.T) {
	s := newSandbox(t)
	var entries []entry
	for i := range 11 {
		entries = append(entries, regEntry(strings.Repeat("f", i+1), ""))
	}
	st, err := unpackEntries(t, s.dst, Options{Limits: Limits{MaxEntries: 10}}, entries...)
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v, want ErrLimit", err)
	}
	if st.Entries != 11 {
		t.Errorf("stopped after %d entries, want 11", st.Entries)
	}
	if _, err := os.Lstat(filepath.Join(s.dst, strings.Repeat("f", 11))); err == nil {
		t.Error("the entry over the limit was written")
	}
}

func TestUnpackRejectsTooManyImplicitParents(t *testing.T) {
	// One entry, but 20 missing parents: directories cost inodes too.
	s := newSandbox(t)
	_, err := unpackEntries(t, s.dst, Options{Limits: Limits{MaxEntries: 10}}, regEntry(strings.Repeat("d/", 20)+"f", "x"))
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v, want ErrLimit", err)
	}
}

func TestUnpackRejectsFilesOverMaxBytes(t *testing.T) {
	s := newSandbox(t)
	limits := Limits{MaxBytes: 1000}
	st, err := unpackEntries(t, s.dst, Options{Limits: limits},
		regEntry("a", strings.Repeat("a", 600)), regEntry("b", strings.Repeat("b", 600)))
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v, want ErrLimit", err)
	}
	if st.Bytes != 600 {
		t.Errorf("wrote %d bytes, want only the first file's 600", st.Bytes)
	}
	if _, err := os.Lstat(filepath.Join(s.dst, "b")); err == nil {
		t.Error("the file over the limit was created")
	}
}

func TestUnpackLayerRejectsDecompressionBomb(t *testing.T) {
	// 64 MiB of zeros compress to a few dozen KiB: the header size alone
	// must stop it, before a byte is written.
	const size = 64 << 20
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bomb", Mode: 0o644, Size: size}); err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for range size / len(zeros) {
		tw.Write(zeros)
	}
	tw.Close()

	var gz, zs bytes.Buffer
	gw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	gw.Write(raw.Bytes())
	gw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(raw.Bytes())
	zw.Close()

	for mediaType, blob := range map[string][]byte{MediaTypeLayerGzip: gz.Bytes(), MediaTypeLayerZstd: zs.Bytes()} {
		s := newSandbox(t)
		st, err := UnpackLayer(context.Background(), s.dst, bytes.NewReader(blob), mediaType, Options{Limits: Limits{MaxBytes: 1 << 20}})
		if !errors.Is(err, ErrLimit) {
			t.Errorf("%s (%d bytes): err = %v, want ErrLimit", mediaType, len(blob), err)
		}
		if st.Bytes != 0 {
			t.Errorf("%s: wrote %d bytes", mediaType, st.Bytes)
		}
	}
}

func TestUnpackRejectsOversizedMetadataStream(t *testing.T) {
	// PAX records are not file bytes, but still cost decompression: the
	// stream budget bounds them.
	s := newSandbox(t)
	big := strings.Repeat("x", 900<<10)
	var entries []entry
	for i := range 3 {
		entries = append(entries, regEntry(strings.Repeat("p", i+1), "").with(func(h *tar.Header) {
			h.PAXRecords = map[string]string{"SCHILY.xattr.user.big": big}
		}))
	}
	_, err := unpackEntries(t, s.dst, Options{Limits: Limits{MaxEntries: 10, MaxBytes: 1 << 20}}, entries...)
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v, want ErrLimit", err)
	}
}

func TestUnpackRejectsLongPaths(t *testing.T) {
	long := strings.Repeat("d/", 2100) + "f" // 4201 bytes
	for _, e := range []entry{regEntry(long, "x"), symlinkEntry("ln", long), hardlinkEntry("hl", long)} {
		s := newSandbox(t)
		_, err := unpackEntries(t, s.dst, Options{}, e)
		if !errors.Is(err, ErrLimit) {
			t.Errorf("type %q: err = %v, want ErrLimit", e.hdr.Typeflag, err)
		}
		if entries, _ := os.ReadDir(s.dst); len(entries) != 0 {
			t.Errorf("type %q: wrote %v", e.hdr.Typeflag, entries)
		}
	}
	// A shorter limit applies too.
	s := newSandbox(t)
	if _, err := unpackEntries(t, s.dst, Options{Limits: Limits{MaxPathLen: 8}}, regEntry("123456789", "")); !errors.Is(err, ErrLimit) {
		t.Errorf("MaxPathLen 8: err = %v, want ErrLimit", err)
	}
}
