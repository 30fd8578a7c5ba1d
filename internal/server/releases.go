package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/store"
	"github.com/tern-iot/tern/internal/trust"
)

// releaseNameRE is what a release may be called: "hello-1.2.0", "2026.05-rc1".
var releaseNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)

// errNoReleaseKeys refuses uploads to an account that trusts no release key yet.
var errNoReleaseKeys = &apiError{Status: http.StatusUnprocessableEntity, Title: "no release keys",
	Detail: "the account has no release key to verify packages against: register one (POST /api/v1/release-keys, tern fleet release-keys add)"}

// packageRefused is the answer to a package that does not verify.
func packageRefused(err error) error {
	return &apiError{Status: http.StatusUnprocessableEntity, Title: "package refused", Detail: err.Error()}
}

// releaseKeys returns the account's release keys, parsed.
func (s *Server) releaseKeys(ctx context.Context, account string) ([]trust.PublicKey, error) {
	recs, err := s.store.ReleaseKeys(ctx, account)
	if err != nil {
		return nil, err
	}
	var keys []trust.PublicKey
	for _, k := range recs {
		pub, err := trust.ParsePublicKey([]byte(k.PublicKey))
		if err != nil {
			return nil, fmt.Errorf("release key %s: %w", k.KeyID, err)
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, errNoReleaseKeys
	}
	return keys, nil
}

// readPackage reads one .tern package from r in one pass: its signature is checked
// against keys before any blob is read, and each blob is hashed while it is
// written to the blob store, so nothing is kept of a package that does not verify
// (but blobs that did verify, which are harmless and collected if unreferenced).
func (s *Server) readPackage(account string, r io.Reader, keys []trust.PublicKey) (store.Package, error) {
	pkg, err := app.Read(r, app.ReadOptions{Keys: keys}, s.blobs)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return store.Package{}, mbe
		}
		return store.Package{}, packageRefused(err)
	}
	if !utf8.Valid(pkg.ManifestJSON) || bytes.IndexByte(pkg.ManifestJSON, 0) >= 0 {
		return store.Package{}, packageRefused(errors.New("manifest.json is not UTF-8 text"))
	}
	sig, err := pkg.Envelope.Marshal()
	if err != nil {
		return store.Package{}, err
	}
	sum := sha256.Sum256(pkg.ManifestJSON)
	p := store.Package{AccountID: account, Digest: "sha256:" + hex.EncodeToString(sum[:]), Kind: store.KindApp,
		Name: pkg.Manifest.App.Name, Version: pkg.Manifest.App.Version, Manifest: pkg.ManifestJSON, Sig: sig, CreatedAt: s.now()}
	if pkg.Manifest.Kind == app.KindOS {
		// The OS is one per device: its DesiredPackage is named "os".
		p.Kind, p.Name, p.Version = store.KindOS, store.KindOS, pkg.Manifest.OS.Version
	}
	for _, d := range pkg.Manifest.Blobs() {
		p.Blobs = append(p.Blobs, store.PackageBlob{Digest: d.Digest, Size: d.Size})
		p.Size += d.Size
	}
	return p, nil
}

// postPackage uploads one package (the body is the .tern file) without making a
// release of it yet: POST /api/v1/releases with its digest does.
func (s *Server) postPackage(w http.ResponseWriter, r *http.Request, c *caller) error {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/octet-stream" && ct != packageMediaType {
		return &apiError{Status: http.StatusUnsupportedMediaType, Title: "unsupported media type",
			Detail: "send the .tern file as application/octet-stream or " + packageMediaType}
	}
	keys, err := s.releaseKeys(r.Context(), c.Account)
	if err != nil {
		return err
	}
	p, err := s.readPackage(c.Account, r.Body, keys)
	if err != nil {
		return err
	}
	if err := s.store.PutPackage(r.Context(), p); err != nil {
		return err
	}
	s.log.Info("package uploaded", "account", c.Account, "app", p.Name, "version", p.Version, "manifest", p.Digest, "size", p.Size)
	return writeJSON(w, 201, p)
}

// packageMediaType is the media type of a .tern file.
const packageMediaType = "application/vnd.tern.package"

// releaseReq makes a release of packages uploaded before (POST /api/v1/packages).
type releaseReq struct {
	Name     string   `json:"name"`
	Packages []string `json:"packages"` // manifest digests
}

// postRelease creates a release: from a multipart/form-data upload (a "name" field
// and one or more "package" files, each streamed through the package reader), or
// from JSON naming packages already uploaded.
func (s *Server) postRelease(w http.ResponseWriter, r *http.Request, c *caller) error {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var rel store.Release
	var err error
	switch ct {
	case "multipart/form-data":
		rel, err = s.releaseFromMultipart(r, c)
	case "application/json", "":
		rel, err = s.releaseFromJSON(r, c)
	default:
		return &apiError{Status: http.StatusUnsupportedMediaType, Title: "unsupported media type",
			Detail: "send multipart/form-data (name, package files) or application/json (name, package digests)"}
	}
	if err != nil {
		return err
	}
	out, err := s.store.CreateRelease(r.Context(), rel)
	if err != nil {
		return err
	}
	s.log.Info("release created", "account", c.Account, "release", out.Name, "id", out.ID, "packages", len(out.Packages), "size", out.Size)
	return writeJSON(w, 201, out)
}

func (s *Server) newRelease(ctx context.Context, c *caller, name string) (store.Release, error) {
	if !releaseNameRE.MatchString(name) {
		return store.Release{}, badRequest("release name must be 1 to 128 letters, digits and ._+- (starting with a letter or digit)")
	}
	if _, err := s.store.Release(ctx, c.Account, name); err == nil {
		return store.Release{}, fmt.Errorf("release %q: %w", name, store.ErrExists)
	}
	return store.Release{ID: "r-" + randomID(6), AccountID: c.Account, Name: name, CreatedAt: s.now()}, nil
}

func (s *Server) releaseFromJSON(r *http.Request, c *caller) (store.Release, error) {
	var req releaseReq
	if err := decode(r, &req); err != nil {
		return store.Release{}, err
	}
	rel, err := s.newRelease(r.Context(), c, req.Name)
	if err != nil {
		return rel, err
	}
	if len(req.Packages) == 0 || len(req.Packages) > 64 {
		return rel, badRequest("packages: 1 to 64 manifest digests")
	}
	for _, d := range req.Packages {
		if !digestRE.MatchString(d) {
			return rel, badRequest("package %q is not a sha256:<hex> manifest digest", d)
		}
		rel.Packages = append(rel.Packages, store.Package{AccountID: c.Account, Digest: d})
	}
	return rel, nil
}

func (s *Server) releaseFromMultipart(r *http.Request, c *caller) (store.Release, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return store.Release{}, badRequest("multipart body: %v", err)
	}
	keys, err := s.releaseKeys(r.Context(), c.Account)
	if err != nil {
		return store.Release{}, err
	}
	var rel store.Release
	var pkgs []store.Package
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return rel, mbe
			}
			return rel, badRequest("multipart body: %v", err)
		}
		switch part.FormName() {
		case "name":
			if rel.ID != "" {
				return rel, badRequest("more than one name field")
			}
			v, err := io.ReadAll(io.LimitReader(part, 256))
			if err != nil {
				return rel, badRequest("name field: %v", err)
			}
			if rel, err = s.newRelease(r.Context(), c, strings.TrimSpace(string(v))); err != nil {
				return rel, err
			}
		case "package":
			if len(pkgs) == 64 {
				return rel, badRequest("at most 64 packages in a release")
			}
			start := time.Now()
			p, err := s.readPackage(c.Account, part, keys)
			if err != nil {
				return rel, fmt.Errorf("package %d (%s): %w", len(pkgs)+1, part.FileName(), err)
			}
			s.log.Debug("package verified", "app", p.Name, "version", p.Version, "size", p.Size, "took", time.Since(start))
			pkgs = append(pkgs, p)
		default:
			return rel, badRequest("unknown form field %q: send name and package", part.FormName())
		}
		part.Close()
	}
	if rel.ID == "" {
		return rel, badRequest("a name field is required")
	}
	if len(pkgs) == 0 {
		return rel, badRequest("at least one package file is required")
	}
	rel.Packages = pkgs
	return rel, nil
}

func (s *Server) listReleases(w http.ResponseWriter, r *http.Request, c *caller) error {
	rs, err := s.store.Releases(r.Context(), c.Account)
	if err != nil {
		return err
	}
	return writeJSON(w, 200, rs)
}

func (s *Server) getRelease(w http.ResponseWriter, r *http.Request, c *caller) error {
	rel, err := s.store.Release(r.Context(), c.Account, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, 200, rel)
}

// The device endpoints below are reached with the device's client certificate
// (see authenticateDevice); each serves only what a release of the device's own
// account holds, and answers 404 for anything else, whoever has it.

func (s *Server) getDeviceManifest(w http.ResponseWriter, r *http.Request, c *caller) error {
	return s.serveManifest(w, r, c, false)
}

func (s *Server) getDeviceManifestSig(w http.ResponseWriter, r *http.Request, c *caller) error {
	return s.serveManifest(w, r, c, true)
}

func (s *Server) serveManifest(w http.ResponseWriter, r *http.Request, c *caller, sig bool) error {
	digest := r.PathValue("digest")
	if !digestRE.MatchString(digest) {
		return badRequest("manifest must be sha256:<64 hex digits>")
	}
	m, g, err := s.store.ReleasedManifest(r.Context(), c.Account, digest)
	if err != nil {
		return err
	}
	body, etag := m, digest
	if sig {
		body, etag = g, digest+"/sig"
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("ETag", `"`+etag+`"`)
	w.Header().Set("Cache-Control", "private, no-cache")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	return nil
}

// getDeviceBlob serves a blob with range requests (http.ServeContent), so a
// device resumes a cut download where it stopped.
func (s *Server) getDeviceBlob(w http.ResponseWriter, r *http.Request, c *caller) error {
	digest := r.PathValue("digest")
	if !digestRE.MatchString(digest) {
		return badRequest("blob must be sha256:<64 hex digits>")
	}
	if _, err := s.store.ReleasedBlob(r.Context(), c.Account, digest); err != nil {
		return err
	}
	f, err := s.blobs.open(digest)
	if err != nil {
		return fmt.Errorf("blob %s is recorded but not on disk: %w", digest, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+digest+`"`)
	w.Header().Set("Cache-Control", "private, max-age=31536000, immutable")
	http.ServeContent(w, r, "", fi.ModTime(), f)
	return nil
}
