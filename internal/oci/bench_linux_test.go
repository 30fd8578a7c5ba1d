//go:build linux

package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// benchLayer returns an uncompressed tar of about 100 MB shaped like a root
// file system: a few hundred directories and files from 1 KiB to 4 MiB, with
// text-like contents that compress about 3:1.
func benchLayer(b *testing.B) []byte {
	b.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	words := make([][]byte, 512)
	for i := range words {
		w := make([]byte, 2+rng.IntN(10))
		for j := range w {
			w[j] = 'a' + byte(rng.IntN(26))
		}
		words[i] = w
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	const total = 100 << 20
	var written int
	for d := 0; written < total; d++ {
		dir := fmt.Sprintf("usr/lib/pkg%03d/", d)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: testTime}); err != nil {
			b.Fatal(err)
		}
		for f := 0; f < 16 && written < total; f++ {
			size := 1 << (10 + rng.IntN(13)) // 1 KiB .. 4 MiB
			body := make([]byte, 0, size+16)
			for len(body) < size {
				body = append(append(body, words[rng.IntN(len(words))]...), ' ')
			}
			body = body[:size]
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sf%02d", dir, f), Mode: 0o644, Size: int64(size), ModTime: testTime}
			if err := tw.WriteHeader(hdr); err != nil {
				b.Fatal(err)
			}
			tw.Write(body)
			written += size
		}
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: dir + "current", Linkname: "f00", ModTime: testTime})
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkUnpackLayer100MB measures UnpackLayer, decompression included, on a
// 100 MB layer. The reported MB/s are of the uncompressed layer; "tar" is the
// file system work alone.
func BenchmarkUnpackLayer100MB(b *testing.B) {
	requireRoot(b)
	layer := benchLayer(b)
	for _, c := range []struct{ name, mediaType string }{{"tar", MediaTypeLayerTar}, {"gzip", MediaTypeLayerGzip}, {"zstd", MediaTypeLayerZstd}} {
		mt := c.mediaType
		blob := compress(b, mt, layer)
		b.Run(c.name, func(b *testing.B) {
			b.ReportMetric(float64(len(layer))/float64(len(blob)), "ratio")
			b.SetBytes(int64(len(layer)))
			base := b.TempDir()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dst := filepath.Join(base, "root")
				if err := os.RemoveAll(dst); err != nil {
					b.Fatal(err)
				}
				if err := os.Mkdir(dst, 0o755); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := UnpackLayer(context.Background(), dst, bytes.NewReader(blob), mt, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
