package peers

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image is an OCI image built from directories, in the three forms the tools take:
// an OCI layout (tern app build --from oci:DIR), an OCI archive (ctr images import,
// podman load) and its reference.
type Image struct {
	Layout  string // OCI image layout directory
	Archive string // the layout as a tar file
	Ref     string // the name the archive carries, e.g. localhost/tern-bench/hello:1.0.0
	Layers  []v1.Descriptor
}

// BuildImage makes an OCI image whose layers are the directories in layers (bottom
// first) and whose config is cfg, under dir. Layers are gzip tars written the same
// way every time: the same directory gives the same layer digest, so images built
// from a shared base directory share that layer.
func BuildImage(dir, ref string, cfg v1.Config, layers ...string) (*Image, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for i, l := range layers {
		path := filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i))
		if err := writeLayer(l, path); err != nil {
			return nil, err
		}
		layer, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		if img, err = mutate.AppendLayers(img, layer); err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", runtime.GOARCH, cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	im := &Image{Layout: filepath.Join(dir, "oci"), Archive: filepath.Join(dir, "oci.tar"), Ref: ref}
	os.RemoveAll(im.Layout)
	p, err := layout.Write(im.Layout, empty.Index)
	if err != nil {
		return nil, err
	}
	// containerd names an imported image by io.containerd.image.name, podman by the
	// OCI ref name: give both the full reference.
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref})); err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	im.Layers = m.Layers
	for i := range layers {
		os.Remove(filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i)))
	}
	return im, tarTree(im.Layout, im.Archive)
}

// writeLayer writes dir as a gzip tar: entries sorted, owned by root, times fixed.
func writeLayer(dir, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zw, _ := gzip.NewWriterLevel(f, gzip.DefaultCompression)
	tw := tar.NewWriter(zw)
	var paths []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	for _, p := range paths {
		if err := addEntry(tw, dir, p, time.Unix(1700000000, 0)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

func addEntry(tw *tar.Writer, root, p string, mtime time.Time) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	var target string
	if fi.Mode()&fs.ModeSymlink != 0 {
		if target, err = os.Readlink(p); err != nil {
			return err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, target)
	if err != nil {
		return err
	}
	rel, _ := filepath.Rel(root, p)
	hdr.Name = filepath.ToSlash(rel)
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
	hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = mtime, time.Time{}, time.Time{}
	hdr.Format = tar.FormatPAX
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	src, err := os.Open(p)
	if err != nil {
		return err
	}
	defer src.Close()
	_, err = io.Copy(tw, src)
	return err
}

// tarTree writes the directory dir as a plain tar file at path (an OCI archive
// when dir is an OCI layout).
func tarTree(dir, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		return addEntry(tw, dir, p, time.Unix(1700000000, 0))
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}
