package app

import (
	"bufio"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/tern-iot/tern/internal/trust"
)

// Package build and verify throughput for a 100 MB layer:
//
//	go test -run='^$' -bench=100MB -benchtime=3x ./internal/app/

const benchFileSize = 100 << 20

// writeBinaryLike writes size bytes that compress roughly like an executable: a mix
// of incompressible blocks (embedded compressed data, hashes), repeats of earlier
// blocks with a few changed bytes (similar code and tables), and low-entropy blocks
// made of short sequences of skewed frequency, with zero padding (code, strings).
// The content is the same on every run.
func writeBinaryLike(b *testing.B, path string, size int) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	const block = 64 << 10
	random := func(p []byte) {
		for i := 0; i+8 <= len(p); i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				p[i+j] = byte(v >> (8 * j))
			}
		}
	}
	// "Instructions": short byte sequences, some far more frequent than others.
	vocab := make([][]byte, 4096)
	for i := range vocab {
		vocab[i] = make([]byte, 2+rng.IntN(8))
		for j := range vocab[i] {
			vocab[i][j] = byte(rng.Uint32())
		}
	}
	zipf := rand.NewZipf(rng, 1.1, 4, uint64(len(vocab)-1))
	var pool [][]byte
	buf := make([]byte, block)
	for written := 0; written < size; written += block {
		switch k := rng.IntN(100); {
		case k < 15 || len(pool) == 0:
			random(buf)
			if len(pool) < 32 {
				pool = append(pool, append([]byte(nil), buf...))
			}
		case k < 40:
			copy(buf, pool[rng.IntN(len(pool))])
			for range 256 {
				buf[rng.IntN(block)] = byte(rng.Uint32())
			}
		default:
			for i := 0; i < len(buf); {
				if rng.IntN(16) == 0 {
					buf[i] = byte(rng.Uint32())
					i++
					continue
				}
				i += copy(buf[i:], vocab[zipf.Uint64()])
			}
			clear(buf[rng.IntN(block/2):][:rng.IntN(block/8)])
		}
		if _, err := w.Write(buf[:min(block, size-written)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
}

func benchRootfs(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		b.Fatal(err)
	}
	writeBinaryLike(b, filepath.Join(dir, "bin/app"), benchFileSize)
	return dir
}

func benchBuild(b *testing.B, rootfs, algo, out string) int64 {
	b.Helper()
	f, err := os.Create(out)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	opts := BuildOptions{
		Source:      Source{Kind: SourceRootFS, Path: rootfs},
		Manifest:    minimalManifest(b),
		Keys:        []trust.PrivateKey{testKey(1)},
		Compression: algo,
		TempDir:     filepath.Dir(out),
	}
	pm, err := Build(context.Background(), opts, f)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return pm.Image.Layers[0].Size
}

func BenchmarkBuild100MB(b *testing.B) {
	rootfs := benchRootfs(b)
	for _, algo := range []string{CompressZstd, CompressGzip} {
		b.Run(algo, func(b *testing.B) {
			out := filepath.Join(b.TempDir(), "app.tern")
			b.SetBytes(benchFileSize)
			var layer int64
			for b.Loop() {
				layer = benchBuild(b, rootfs, algo, out)
			}
			b.ReportMetric(float64(benchFileSize)/float64(layer), "ratio")
		})
	}
}

func BenchmarkVerify100MB(b *testing.B) {
	rootfs := benchRootfs(b)
	key := testKey(1)
	for _, algo := range []string{CompressZstd, CompressGzip} {
		b.Run(algo, func(b *testing.B) {
			out := filepath.Join(b.TempDir(), "app.tern")
			layer := benchBuild(b, rootfs, algo, out)
			b.SetBytes(benchFileSize)
			for b.Loop() {
				f, err := os.Open(out)
				if err != nil {
					b.Fatal(err)
				}
				_, err = Read(f, trusting(key), Discard)
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(layer)/(1<<20), "layer-MiB")
		})
	}
}
