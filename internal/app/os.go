package app

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"

	"github.com/klauspost/compress/zstd"

	"github.com/tern-iot/tern/internal/trust"
)

// MediaTypeOSPayload is an OS image's payload: the raw file system image, zstd
// compressed. A device decompresses it straight into its inactive slot.
const MediaTypeOSPayload = "application/vnd.tern.os.image.v1+zstd"

// OSImage is the os section of an OS package's manifest.
type OSImage struct {
	Version     string   `json:"version"`      // semver of the OS release
	DeviceTypes []string `json:"device_types"` // devices it may be installed on
	// Image names the raw image written to the slot: its sha256 and size, checked
	// as the payload is decompressed into the slot.
	Image          ImageDigest `json:"image"`
	Payload        Descriptor  `json:"payload"`
	AllowDowngrade bool        `json:"allow_downgrade,omitempty"`
}

// ImageDigest is the digest and size of uncompressed bytes.
type ImageDigest struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

var deviceTypeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (pm *PackageManifest) validateOS() error {
	o := pm.OS
	if o == nil {
		return fmt.Errorf("%w: an os package without an os section", ErrBadManifest)
	}
	if !pm.App.isZero() || len(pm.Image.Layers) > 0 || pm.Image.Config.Digest != "" {
		return fmt.Errorf("%w: an os package with an app or image section", ErrBadManifest)
	}
	var errs []error
	if _, err := ParseVersion(o.Version); err != nil {
		errs = append(errs, fmt.Errorf("os.version: %w", err))
	}
	if len(o.DeviceTypes) == 0 {
		errs = append(errs, errors.New("os.device_types: at least one"))
	}
	for _, t := range o.DeviceTypes {
		if !deviceTypeRE.MatchString(t) {
			errs = append(errs, fmt.Errorf("os.device_types: bad device type %q", t))
		}
	}
	if !digestRE.MatchString(o.Image.Digest) || o.Image.Size <= 0 {
		errs = append(errs, fmt.Errorf("os.image: bad digest %q or size %d", o.Image.Digest, o.Image.Size))
	}
	if !digestRE.MatchString(o.Payload.Digest) || o.Payload.Size <= 0 || o.Payload.MediaType != MediaTypeOSPayload {
		errs = append(errs, fmt.Errorf("os.payload: want a %s blob with digest and size", MediaTypeOSPayload))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrBadManifest, err)
	}
	return nil
}

// isZero reports whether m is the empty manifest (an os package has none).
func (m *Manifest) isZero() bool {
	return m.Name == "" && m.Version == "" && len(m.Command) == 0 && len(m.Env) == 0
}

// OSBuildOptions are the inputs of BuildOS.
type OSBuildOptions struct {
	Image          string // raw root file system image
	Version        string
	DeviceTypes    []string
	AllowDowngrade bool
	Keys           []trust.PrivateKey
	TempDir        string
}

// BuildOS makes a signed OS package from a root file system image: the image is
// compressed with zstd into the payload, and the manifest names both the payload's
// digest and the raw image's, which the device checks as it writes the slot.
func BuildOS(ctx context.Context, opts OSBuildOptions, w io.Writer) (*PackageManifest, error) {
	if len(opts.Keys) == 0 {
		return nil, errors.New("build: at least one release key is needed to sign the package")
	}
	in, err := os.Open(opts.Image)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(opts.TempDir, "tern-os-payload-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	payloadHash, rawHash := sha256.New(), sha256.New()
	cw := &countWriter{w: io.MultiWriter(tmp, payloadHash)}
	zw, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, err
	}
	raw, err := io.Copy(zw, io.TeeReader(ctxReader{ctx, in}, rawHash))
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("compress %s: %w", opts.Image, err)
	}
	if raw == 0 {
		return nil, fmt.Errorf("%s is empty", opts.Image)
	}
	pm := &PackageManifest{Format: FormatVersion, Kind: KindOS, OS: &OSImage{
		Version: opts.Version, DeviceTypes: slices.Clone(opts.DeviceTypes), AllowDowngrade: opts.AllowDowngrade,
		Image:   ImageDigest{Digest: digestOf(rawHash), Size: raw},
		Payload: Descriptor{MediaType: MediaTypeOSPayload, Digest: digestOf(payloadHash), Size: cw.n},
	}}
	err = signAndWrite(w, pm, opts.Keys, map[string]BlobSource{pm.OS.Payload.Digest: {Descriptor: pm.OS.Payload,
		Open: openFile(tmp.Name())}})
	return pm, err
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
