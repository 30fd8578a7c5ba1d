package oci

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// compress returns data compressed for the layer media type.
func compress(t testing.TB, mediaType string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	switch mediaType {
	case MediaTypeLayerTar:
		return data
	case MediaTypeLayerGzip, MediaTypeDockerLayerGzip:
		w = gzip.NewWriter(&buf)
	case MediaTypeLayerZstd:
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w = zw
	default:
		t.Fatalf("no compressor for %s", mediaType)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var layerMediaTypes = []string{MediaTypeLayerTar, MediaTypeLayerGzip, MediaTypeDockerLayerGzip, MediaTypeLayerZstd}

func TestDecompressReadsEveryLayerMediaType(t *testing.T) {
	data := bytes.Repeat([]byte("tern layer bytes "), 10000)
	for _, mt := range layerMediaTypes {
		rc, err := Decompress(bytes.NewReader(compress(t, mt, data)), mt)
		if err != nil {
			t.Fatalf("%s: %v", mt, err)
		}
		got, err := io.ReadAll(rc)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: read %d bytes, %v; want the original %d", mt, len(got), err, len(data))
		}
		if err := rc.Close(); err != nil {
			t.Errorf("%s: close: %v", mt, err)
		}
	}
}

func TestDecompressRejectsUnknownMediaType(t *testing.T) {
	for _, mt := range []string{"", "application/vnd.oci.image.layer.v1.tar+bzip2", "application/octet-stream", "application/vnd.oci.image.config.v1+json"} {
		if _, err := Decompress(bytes.NewReader(nil), mt); !errors.Is(err, ErrUnsupportedMediaType) {
			t.Errorf("%q: err = %v, want ErrUnsupportedMediaType", mt, err)
		}
	}
}

func TestDecompressRejectsCorruptGzip(t *testing.T) {
	if _, err := Decompress(bytes.NewReader([]byte("not gzip at all")), MediaTypeLayerGzip); err == nil {
		t.Error("corrupt gzip accepted")
	}
}

func TestDecompressRejectsZstdWindowOverLimit(t *testing.T) {
	// A window above MaxZstdWindow would make the decoder hold that much
	// history in memory: refuse it as a bomb.
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf, zstd.WithWindowSize(4*MaxZstdWindow), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(bytes.Repeat([]byte{1, 2, 3, 4}, 1<<20))
	zw.Close()
	rc, err := Decompress(&buf, MediaTypeLayerZstd)
	if err == nil {
		defer rc.Close()
		_, err = io.Copy(io.Discard, rc)
	}
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v, want ErrLimit", err)
	}
}
