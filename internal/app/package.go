package app

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/tern-iot/tern/internal/trust"
)

// The package format: a tar whose entries come in exactly this order, so a reader
// verifies the signed manifest before it reads a single blob, and each blob against
// the manifest while it streams.
const (
	EntryFormat   = "tern-package"  // format version, FormatLine
	EntryManifest = "manifest.json" // PackageManifest, the DSSE payload
	EntrySig      = "manifest.sig"  // trust.Envelope over manifest.json
	BlobPrefix    = "blobs/sha256/" // then the config and layers, content addressed

	FormatVersion = 1
	FormatLine    = "tern-package 1\n"

	// PayloadType is the DSSE payload type of a package manifest: a signature over
	// an app manifest can never be replayed as some other signed document.
	PayloadType = "application/vnd.tern.app.manifest.v1+json"

	// MaxSigSize bounds manifest.sig: room for dozens of signatures, no more.
	MaxSigSize = 256 << 10
)

// OCI media types a package holds.
const (
	MediaTypeConfig    = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
)

// Errors of the package reader, one for each way a package can be bad.
var (
	ErrNotPackage        = errors.New("not a tern package")
	ErrUnsupportedFormat = errors.New("unsupported package format")
	ErrUnknownEntry      = errors.New("unknown entry")
	ErrDuplicateEntry    = errors.New("duplicate entry")
	ErrEntryOrder        = errors.New("entry out of order")
	ErrTruncated         = errors.New("package is truncated")
	ErrTooLarge          = errors.New("entry too large")
	ErrBlobDigest        = errors.New("blob digest mismatch")
	ErrBlobSize          = errors.New("blob size mismatch")
	ErrMissingBlob       = errors.New("missing blob")
	ErrSignature         = errors.New("bad signature")
)

// Descriptor names a blob: its media type, digest ("sha256:<hex>") and size.
type Descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// Hex returns the hex part of the digest.
func (d Descriptor) Hex() string { return strings.TrimPrefix(d.Digest, "sha256:") }

// Image is the OCI image a package carries: its config and its layers, in order.
type Image struct {
	Platform string       `json:"platform"` // os/arch, e.g. linux/arm64
	Config   Descriptor   `json:"config"`
	Layers   []Descriptor `json:"layers"`
	DiffIDs  []string     `json:"diffIDs,omitempty"` // sha256 of each uncompressed layer
}

// PackageManifest is manifest.json: the app manifest with command, env, workdir and
// user resolved from the image, and every blob by digest and size. It is the payload
// the release keys sign.
type PackageManifest struct {
	Format int `json:"format"`
	// Kind is KindApp (the default, written as nothing) or KindOS.
	Kind  string   `json:"kind,omitempty"`
	App   Manifest `json:"app,omitzero"`
	Image Image    `json:"image,omitzero"`
	OS    *OSImage `json:"os,omitempty"`
}

// Package kinds.
const (
	KindApp = ""   // an app: an OCI image and its manifest
	KindOS  = "os" // a root file system image for an A/B slot
)

// Blobs returns the package's blobs in package order, each digest once.
func (p *PackageManifest) Blobs() []Descriptor {
	if p.Kind == KindOS && p.OS != nil {
		return []Descriptor{p.OS.Payload}
	}
	seen := map[string]bool{}
	var out []Descriptor
	for _, d := range append([]Descriptor{p.Image.Config}, p.Image.Layers...) {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			out = append(out, d)
		}
	}
	return out
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// parsePackageManifest decodes and validates manifest.json.
func parsePackageManifest(data []byte) (*PackageManifest, error) {
	var pm PackageManifest
	if err := strictJSON(data, &pm); err != nil {
		return nil, fmt.Errorf("%w: manifest.json: %v", ErrBadManifest, err)
	}
	if pm.Format != FormatVersion {
		return nil, fmt.Errorf("%w: manifest.json format %d, this tern reads %d", ErrUnsupportedFormat, pm.Format, FormatVersion)
	}
	switch pm.Kind {
	case KindApp:
		if pm.OS != nil {
			return nil, fmt.Errorf("%w: an app package with an os section", ErrBadManifest)
		}
	case KindOS:
		if err := pm.validateOS(); err != nil {
			return nil, err
		}
		return &pm, nil
	default:
		return nil, fmt.Errorf("%w: unknown package kind %q", ErrUnsupportedFormat, pm.Kind)
	}
	if err := pm.App.Validate(); err != nil {
		return nil, err
	}
	if len(pm.App.Command) == 0 {
		return nil, fmt.Errorf("%w: no command", ErrBadManifest)
	}
	if pm.Image.Config.MediaType != MediaTypeConfig {
		return nil, fmt.Errorf("%w: config media type %q", ErrBadManifest, pm.Image.Config.MediaType)
	}
	if len(pm.Image.Layers) == 0 {
		return nil, fmt.Errorf("%w: no layers", ErrBadManifest)
	}
	if len(pm.Image.DiffIDs) != 0 && len(pm.Image.DiffIDs) != len(pm.Image.Layers) {
		return nil, fmt.Errorf("%w: %d diffIDs for %d layers", ErrBadManifest, len(pm.Image.DiffIDs), len(pm.Image.Layers))
	}
	for _, id := range pm.Image.DiffIDs {
		if !digestRE.MatchString(id) {
			return nil, fmt.Errorf("%w: bad diffID %q", ErrBadManifest, id)
		}
	}
	for i, d := range append([]Descriptor{pm.Image.Config}, pm.Image.Layers...) {
		if !digestRE.MatchString(d.Digest) {
			return nil, fmt.Errorf("%w: blob %d: bad digest %q", ErrBadManifest, i, d.Digest)
		}
		if d.Size <= 0 {
			return nil, fmt.Errorf("%w: blob %s: bad size %d", ErrBadManifest, d.Digest, d.Size)
		}
		if i > 0 && d.MediaType != MediaTypeLayerGzip && d.MediaType != MediaTypeLayerZstd {
			return nil, fmt.Errorf("%w: layer %s: media type %q (want gzip or zstd OCI layers)", ErrBadManifest, d.Digest, d.MediaType)
		}
	}
	return &pm, nil
}

// BlobSource is a blob to write into a package.
type BlobSource struct {
	Descriptor
	Open func() (io.ReadCloser, error)
}

// WritePackage writes a package: the format line, manifest.json, manifest.sig and the
// blobs in manifest order. The caller supplies bytes already signed; blobs are checked
// against their descriptors as they are copied, so a package is never written with a
// blob that does not match its manifest.
func WritePackage(w io.Writer, manifestJSON []byte, env *trust.Envelope, blobs map[string]BlobSource) error {
	pw, pm, err := newPackageWriter(w, manifestJSON, env)
	if err != nil {
		return err
	}
	for _, d := range pm.Blobs() {
		src, ok := blobs[d.Digest]
		if !ok {
			return fmt.Errorf("%w: %s", ErrMissingBlob, d.Digest)
		}
		rc, err := src.Open()
		if err != nil {
			return fmt.Errorf("blob %s: %w", d.Digest, err)
		}
		err = pw.WriteBlob(d, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return pw.tw.Close()
}

// packageWriter writes the entries of a package in order; it is also the BlobSink
// that copies blobs from one package into another (Resign).
type packageWriter struct{ tw *tar.Writer }

// newPackageWriter validates the manifest and writes the three leading entries.
func newPackageWriter(w io.Writer, manifestJSON []byte, env *trust.Envelope) (*packageWriter, *PackageManifest, error) {
	pm, err := parsePackageManifest(manifestJSON)
	if err != nil {
		return nil, nil, err
	}
	sig, err := env.Marshal()
	if err != nil {
		return nil, nil, err
	}
	tw := tar.NewWriter(w)
	for _, f := range []struct {
		name string
		data []byte
	}{{EntryFormat, []byte(FormatLine)}, {EntryManifest, manifestJSON}, {EntrySig, sig}} {
		if err := tw.WriteHeader(fileHeader(f.name, int64(len(f.data)))); err != nil {
			return nil, nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, nil, err
		}
	}
	return &packageWriter{tw: tw}, pm, nil
}

// WriteBlob copies one blob, checking it against d.
func (pw *packageWriter) WriteBlob(d Descriptor, r io.Reader) error {
	if err := pw.tw.WriteHeader(fileHeader(BlobPrefix+d.Hex(), d.Size)); err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(pw.tw, io.TeeReader(io.LimitReader(r, d.Size+1), h))
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if n != d.Size {
		return fmt.Errorf("blob %s: %w: %d bytes, manifest says %d", d.Digest, ErrBlobSize, n, d.Size)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.Digest {
		return fmt.Errorf("blob %s: %w: content hashes to %s", d.Digest, ErrBlobDigest, got)
	}
	return nil
}

// fileHeader is a deterministic header: the same package bytes for the same inputs.
func fileHeader(name string, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644}
}

// marshalManifest encodes a package manifest the way it is signed.
func marshalManifest(pm *PackageManifest) ([]byte, error) {
	return json.MarshalIndent(pm, "", "  ")
}

// ParsePackageManifest decodes and validates a package's manifest.json, for readers
// that fetch a package in parts (a device reconciling its desired state).
func ParsePackageManifest(data []byte) (*PackageManifest, error) { return parsePackageManifest(data) }
