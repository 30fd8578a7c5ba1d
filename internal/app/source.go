package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Source kinds a package is built from.
const (
	SourceRootFS        = "rootfs"         // a directory used as the root file system
	SourceOCI           = "oci"            // an OCI image layout (umoci, skopeo, buildah, ko)
	SourceDockerArchive = "docker-archive" // a `docker save` / `podman save` tarball
)

// Source is where a package's image comes from, as written on the command line:
// rootfs:DIR, oci:DIR[:TAG] or docker-archive:FILE.
type Source struct {
	Kind string
	Path string
	Tag  string // oci only; empty selects the layout's only image
}

// ParseSource reads rootfs:DIR, oci:DIR[:TAG] or docker-archive:FILE.
func ParseSource(s string) (Source, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return Source{}, fmt.Errorf("source %q: want rootfs:DIR, oci:DIR[:TAG] or docker-archive:FILE", s)
	}
	switch kind {
	case SourceRootFS, SourceDockerArchive:
		return Source{Kind: kind, Path: rest}, nil
	case SourceOCI:
		// The tag is what follows the last colon, unless that names an existing path.
		if i := strings.LastIndex(rest, ":"); i > 0 {
			if _, err := os.Stat(rest); err != nil {
				return Source{Kind: kind, Path: rest[:i], Tag: rest[i+1:]}, nil
			}
		}
		return Source{Kind: kind, Path: rest}, nil
	}
	return Source{}, fmt.Errorf("source %q: unknown kind %q (want rootfs, oci or docker-archive)", s, kind)
}

func (s Source) String() string {
	if s.Tag != "" {
		return s.Kind + ":" + s.Path + ":" + s.Tag
	}
	return s.Kind + ":" + s.Path
}

// refNameAnnotation names an image in an OCI layout's index.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// loadImage opens an OCI layout or docker archive as a go-containerregistry image.
func loadImage(src Source, platform string) (v1.Image, error) {
	switch src.Kind {
	case SourceDockerArchive:
		img, err := tarball.ImageFromPath(src.Path, nil)
		if err != nil {
			return nil, fmt.Errorf("docker archive %s: %w", src.Path, err)
		}
		return img, nil
	case SourceOCI:
		return loadOCILayout(src, platform)
	}
	return nil, fmt.Errorf("source kind %q is not an image", src.Kind)
}

func loadOCILayout(src Source, platform string) (v1.Image, error) {
	idx, err := layout.ImageIndexFromPath(src.Path)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", src.Path, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", src.Path, err)
	}
	var matches []v1.Descriptor
	var tags []string
	for _, d := range im.Manifests {
		ref := d.Annotations[refNameAnnotation]
		tags = append(tags, ref)
		if src.Tag == "" || ref == src.Tag || strings.HasSuffix(ref, ":"+src.Tag) {
			matches = append(matches, d)
		}
	}
	switch {
	case len(matches) == 0 && src.Tag != "":
		return nil, fmt.Errorf("OCI layout %s: no image tagged %q (tags: %s)", src.Path, src.Tag, strings.Join(tags, ", "))
	case len(matches) == 0:
		return nil, fmt.Errorf("OCI layout %s: no images", src.Path)
	case len(matches) > 1:
		return nil, fmt.Errorf("OCI layout %s: %d images, name one with oci:%s:TAG (tags: %s)", src.Path, len(matches), src.Path, strings.Join(tags, ", "))
	}
	d := matches[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, err
		}
		return pickPlatform(child, platform)
	}
	return idx.Image(d.Digest)
}

// pickPlatform selects the image for os/arch from a multi-platform index.
func pickPlatform(idx v1.ImageIndex, platform string) (v1.Image, error) {
	if platform == "" {
		platform = "linux/" + runtime.GOARCH
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	var have []string
	for _, d := range im.Manifests {
		if d.Platform == nil {
			continue
		}
		p := d.Platform.OS + "/" + d.Platform.Architecture
		if d.Platform.Variant != "" && strings.Count(platform, "/") == 2 {
			p += "/" + d.Platform.Variant
		}
		if p == platform {
			return idx.Image(d.Digest)
		}
		have = append(have, p)
	}
	return nil, fmt.Errorf("no image for platform %s in the index (has: %s)", platform, strings.Join(have, ", "))
}

// imageLayer is one layer of a source image, ready to be copied into a package.
type imageLayer struct {
	desc   Descriptor
	diffID string
	open   func() (io.ReadCloser, error)
}

// keepsBytes reports whether a source layer's compressed bytes go into the package
// as they are (so its digest stays the one the image's authors published).
func keepsBytes(src Source, mt types.MediaType) (string, bool, error) {
	switch mt {
	case types.OCILayer, types.DockerLayer:
		return MediaTypeLayerGzip, src.Kind == SourceOCI, nil
	case types.OCILayerZStd:
		return MediaTypeLayerZstd, src.Kind == SourceOCI, nil
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		return "", false, nil
	}
	return "", false, fmt.Errorf("layer media type %q is not supported (foreign and non-distributable layers cannot be shipped to devices)", mt)
}

var errNoLayers = errors.New("image has no layers")
