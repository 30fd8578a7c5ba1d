package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/tern-iot/tern/internal/trust"
)

// BuildOptions are the inputs of Build.
type BuildOptions struct {
	Source      Source
	Manifest    *Manifest // from tern.yaml; resolved against the image's config
	Keys        []trust.PrivateKey
	Compression string // for layers tern makes (rootfs, uncompressed or docker layers): zstd (default) or gzip
	Platform    string // os/arch for multi-platform OCI indexes; default linux/GOARCH
	TempDir     string // scratch space for layers tern compresses; default os.TempDir()
}

// Build makes a signed package from an image and a manifest and writes it to w.
// It returns the package manifest it signed.
func Build(ctx context.Context, opts BuildOptions, w io.Writer) (*PackageManifest, error) {
	if len(opts.Keys) == 0 {
		return nil, errors.New("build: at least one release key is needed to sign the package")
	}
	tmp, err := os.MkdirTemp(opts.TempDir, "tern-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	var cfgRaw []byte
	var cfg v1.ConfigFile
	var layers []imageLayer
	switch opts.Source.Kind {
	case SourceRootFS:
		cfgRaw, layers, err = rootfsImage(opts.Source.Path, tmp, opts.Compression)
		if err == nil {
			err = json.Unmarshal(cfgRaw, &cfg)
		}
	case SourceOCI, SourceDockerArchive:
		cfgRaw, cfg, layers, err = imageLayers(ctx, opts, tmp)
	default:
		err = fmt.Errorf("unknown source kind %q", opts.Source.Kind)
	}
	if err != nil {
		return nil, fmt.Errorf("build from %s: %w", opts.Source, err)
	}
	if len(layers) == 0 {
		return nil, fmt.Errorf("build from %s: %w", opts.Source, errNoLayers)
	}

	app, err := resolve(*opts.Manifest, cfg.Config)
	if err != nil {
		return nil, err
	}
	pm := &PackageManifest{Format: FormatVersion, App: app}
	pm.Image.Platform = cfg.OS + "/" + cfg.Architecture
	if cfg.OS != "linux" {
		return nil, fmt.Errorf("build from %s: image is for %q; devices run linux images", opts.Source, pm.Image.Platform)
	}
	pm.Image.Config = Descriptor{MediaType: MediaTypeConfig, Digest: digestBytes(cfgRaw), Size: int64(len(cfgRaw))}
	blobs := map[string]BlobSource{pm.Image.Config.Digest: {Descriptor: pm.Image.Config, Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader(string(cfgRaw))), nil
	}}}
	for _, l := range layers {
		pm.Image.Layers = append(pm.Image.Layers, l.desc)
		pm.Image.DiffIDs = append(pm.Image.DiffIDs, l.diffID)
		blobs[l.desc.Digest] = BlobSource{Descriptor: l.desc, Open: l.open}
	}
	if err := signAndWrite(w, pm, opts.Keys, blobs); err != nil {
		return nil, err
	}
	return pm, nil
}

// signAndWrite checks the manifest as a reader will, signs it, and writes the
// package.
func signAndWrite(w io.Writer, pm *PackageManifest, keys []trust.PrivateKey, blobs map[string]BlobSource) error {
	data, err := marshalManifest(pm)
	if err != nil {
		return err
	}
	if _, err := parsePackageManifest(data); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	env, err := trust.Sign(PayloadType, data, keys...)
	if err != nil {
		return err
	}
	return WritePackage(w, data, env, blobs)
}

// resolve fills command, env, workdir and user from the image where the manifest
// leaves them out, applies defaults, and validates the result.
func resolve(m Manifest, c v1.Config) (Manifest, error) {
	if len(m.Command) == 0 {
		m.Command = append(append([]string{}, c.Entrypoint...), c.Cmd...)
	}
	if len(m.Command) == 0 {
		return m, fmt.Errorf("%w: no command: the image has no entrypoint or cmd, so tern.yaml must set command", ErrBadManifest)
	}
	env := map[string]string{}
	for _, kv := range c.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	for k, v := range m.Env {
		env[k] = v
	}
	if len(env) > 0 {
		m.Env = env
	}
	if m.WorkDir == "" {
		m.WorkDir = c.WorkingDir
	}
	if m.User == "" {
		m.User = c.User
	}
	m.ApplyDefaults()
	if err := m.Validate(); err != nil {
		return m, err
	}
	return m, nil
}

// rootfsImage makes a one-layer image of a directory.
func rootfsImage(dir, tmp, algo string) ([]byte, []imageLayer, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, nil, err
	}
	if !fi.IsDir() {
		return nil, nil, fmt.Errorf("%s is not a directory", dir)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarDir(dir, pw)) }()
	desc, diffID, path, err := compressLayer(tmp, pr, algo)
	pr.CloseWithError(err)
	if err != nil {
		return nil, nil, err
	}
	cfg := v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH,
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{mustHash(diffID)}}}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, nil, err
	}
	return raw, []imageLayer{{desc: desc, diffID: diffID, open: openFile(path)}}, nil
}

// imageLayers reads an OCI layout or docker archive: compressed layers are kept byte
// for byte; uncompressed ones (docker save writes those) are compressed with algo.
func imageLayers(ctx context.Context, opts BuildOptions, tmp string) ([]byte, v1.ConfigFile, []imageLayer, error) {
	img, err := loadImage(opts.Source, opts.Platform)
	if err != nil {
		return nil, v1.ConfigFile{}, nil, err
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, v1.ConfigFile{}, nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, v1.ConfigFile{}, nil, err
	}
	ls, err := img.Layers()
	if err != nil {
		return nil, v1.ConfigFile{}, nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(ls) {
		return nil, v1.ConfigFile{}, nil, fmt.Errorf("image config lists %d diff_ids for %d layers", len(cfg.RootFS.DiffIDs), len(ls))
	}
	var out []imageLayer
	for i, l := range ls {
		if err := ctx.Err(); err != nil {
			return nil, v1.ConfigFile{}, nil, err
		}
		mt, err := l.MediaType()
		if err != nil {
			return nil, v1.ConfigFile{}, nil, err
		}
		ourType, keep, err := keepsBytes(opts.Source, mt)
		if err != nil {
			return nil, v1.ConfigFile{}, nil, fmt.Errorf("layer %d: %w", i, err)
		}
		diffID := cfg.RootFS.DiffIDs[i].String()
		if keep {
			dg, err := l.Digest()
			if err != nil {
				return nil, v1.ConfigFile{}, nil, err
			}
			size, err := l.Size()
			if err != nil {
				return nil, v1.ConfigFile{}, nil, err
			}
			out = append(out, imageLayer{desc: Descriptor{MediaType: ourType, Digest: dg.String(), Size: size}, diffID: diffID, open: l.Compressed})
			continue
		}
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, v1.ConfigFile{}, nil, err
		}
		desc, gotDiff, path, err := compressLayer(tmp, rc, opts.Compression)
		rc.Close()
		if err != nil {
			return nil, v1.ConfigFile{}, nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if gotDiff != diffID {
			return nil, v1.ConfigFile{}, nil, fmt.Errorf("layer %d: content hashes to %s, the image config says %s", i, gotDiff, diffID)
		}
		out = append(out, imageLayer{desc: desc, diffID: diffID, open: openFile(path)})
	}
	return raw, *cfg, out, nil
}

func openFile(path string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return os.Open(path) }
}

func mustHash(s string) v1.Hash {
	h, err := v1.NewHash(s)
	if err != nil {
		panic(err) // s comes from our own hashing
	}
	return h
}

// BuildFile runs Build into out, written beside it and renamed into place, so a
// failed build never leaves a partial package where a good one is expected.
func BuildFile(ctx context.Context, opts BuildOptions, out string) (*PackageManifest, error) {
	return buildFile(out, func(w io.Writer) (*PackageManifest, error) { return Build(ctx, opts, w) })
}

// BuildOSFile runs BuildOS into out, as BuildFile does.
func BuildOSFile(ctx context.Context, opts OSBuildOptions, out string) (*PackageManifest, error) {
	return buildFile(out, func(w io.Writer) (*PackageManifest, error) { return BuildOS(ctx, opts, w) })
}

func buildFile(out string, build func(io.Writer) (*PackageManifest, error)) (*PackageManifest, error) {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".tern-build-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	pm, err := build(tmp)
	if err != nil {
		return nil, err
	}
	if err := CommitFile(tmp, out); err != nil {
		return nil, err
	}
	return pm, nil
}
