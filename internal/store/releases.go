package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Package is a verified app or OS package as the server keeps it: its manifest.json
// and manifest.sig verbatim (what devices fetch and verify against their release
// keys), keyed by the manifest's digest within an account. Its blobs live on disk,
// content addressed and shared by every account; Blobs names them so that a device
// is served only the blobs of its own account's releases.
//
// Invariant: a package row and its blob rows are written in one transaction, after
// every blob is on disk (synced and renamed into place).
type Package struct {
	AccountID string        `json:"-"`
	Digest    string        `json:"manifest"` // sha256:<hex> of manifest.json
	Kind      string        `json:"kind"`     // "app" or "os"
	Name      string        `json:"name"`
	Version   string        `json:"version"`
	Size      int64         `json:"size"` // all blobs
	Manifest  []byte        `json:"-"`
	Sig       []byte        `json:"-"`
	Blobs     []PackageBlob `json:"-"`
	CreatedAt time.Time     `json:"created_at"`
}

// PackageBlob is one blob of a package.
type PackageBlob struct {
	Digest string
	Size   int64
}

// Package kinds.
const (
	KindApp = "app"
	KindOS  = "os"
)

// Release is a named set of packages, at most one per app name and one OS, that
// campaigns and operators assign to devices.
type Release struct {
	ID        string    `json:"id"`
	AccountID string    `json:"-"`
	Name      string    `json:"name"`
	Packages  []Package `json:"packages"`
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}

// PutPackage records a verified package in account. A package already recorded
// keeps its row but takes the new signature: both were verified against the
// account's release keys, and the newer one is what current keys sign.
func (s *Store) PutPackage(ctx context.Context, p Package) error {
	return s.tx(ctx, func(tx *sql.Tx) (bool, error) { return false, s.putPackage(ctx, tx, p) })
}

func (s *Store) putPackage(ctx context.Context, tx *sql.Tx, p Package) error {
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO packages (account_id, digest, kind, name, version, size, manifest, sig, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, digest) DO UPDATE SET sig = excluded.sig`),
		p.AccountID, p.Digest, p.Kind, p.Name, p.Version, p.Size, string(p.Manifest), string(p.Sig), micros(p.CreatedAt)); err != nil {
		return err
	}
	for _, b := range p.Blobs {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO package_blobs (account_id, package, blob, size) VALUES (?, ?, ?, ?)
			ON CONFLICT DO NOTHING`), p.AccountID, p.Digest, b.Digest, b.Size); err != nil {
			return err
		}
	}
	return nil
}

const packageCols = `account_id, digest, kind, name, version, size, created_at`

func scanPackage(row interface{ Scan(...any) error }) (Package, error) {
	var p Package
	var created int64
	err := row.Scan(&p.AccountID, &p.Digest, &p.Kind, &p.Name, &p.Version, &p.Size, &created)
	p.CreatedAt = fromMicros(created)
	return p, err
}

// Package returns one of an account's packages, without its manifest bytes.
func (s *Store) Package(ctx context.Context, account, digest string) (Package, error) {
	p, err := scanPackage(s.db.QueryRowContext(ctx, s.q(`SELECT `+packageCols+` FROM packages WHERE account_id = ? AND digest = ?`), account, digest))
	return p, notFound(err, "package", digest)
}

// ReleasedManifest returns the manifest.json and manifest.sig of a package that is
// part of one of account's releases (ErrNotFound otherwise: a device sees nothing
// of packages uploaded but not released, nor of other accounts).
func (s *Store) ReleasedManifest(ctx context.Context, account, digest string) (manifest, sig []byte, err error) {
	var m, g string
	err = s.db.QueryRowContext(ctx, s.q(`SELECT p.manifest, p.sig FROM packages p WHERE p.account_id = ? AND p.digest = ?
		AND EXISTS (SELECT 1 FROM release_packages r WHERE r.account_id = p.account_id AND r.package = p.digest)`),
		account, digest).Scan(&m, &g)
	if err != nil {
		return nil, nil, notFound(err, "manifest", digest)
	}
	return []byte(m), []byte(g), nil
}

// ReleasedBlob reports the size of a blob that belongs to a package of one of
// account's releases (ErrNotFound otherwise).
func (s *Store) ReleasedBlob(ctx context.Context, account, digest string) (int64, error) {
	var size int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT b.size FROM package_blobs b WHERE b.account_id = ? AND b.blob = ?
		AND EXISTS (SELECT 1 FROM release_packages r WHERE r.account_id = b.account_id AND r.package = b.package) LIMIT 1`),
		account, digest).Scan(&size)
	return size, notFound(err, "blob", digest)
}

// CreateRelease records r with the packages it names by digest (already put), in
// its order. ErrExists if the account already has a release of that name.
func (s *Store) CreateRelease(ctx context.Context, r Release) (Release, error) {
	var out Release
	err := s.tx(ctx, func(tx *sql.Tx) (bool, error) {
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO releases (id, account_id, name, created_at) VALUES (?, ?, ?, ?)`),
			r.ID, r.AccountID, r.Name, micros(r.CreatedAt)); err != nil {
			if isUniqueViolation(err) {
				return false, fmt.Errorf("release %q: %w", r.Name, ErrExists)
			}
			return false, err
		}
		for i, p := range r.Packages {
			if p.AccountID == "" {
				p.AccountID = r.AccountID
			}
			if len(p.Manifest) > 0 {
				if err := s.putPackage(ctx, tx, p); err != nil {
					return false, err
				}
			} else if _, err := scanPackage(tx.QueryRowContext(ctx, s.q(`SELECT `+packageCols+` FROM packages WHERE account_id = ? AND digest = ?`),
				r.AccountID, p.Digest)); err != nil {
				return false, notFound(err, "package", p.Digest)
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO release_packages (release_id, account_id, package, position) VALUES (?, ?, ?, ?)`),
				r.ID, r.AccountID, p.Digest, i); err != nil {
				if isUniqueViolation(err) {
					return false, fmt.Errorf("%w: package %s twice", ErrBadRelease, p.Digest)
				}
				return false, err
			}
		}
		var err error
		if out, err = s.release(ctx, tx, r.AccountID, r.ID); err != nil {
			return false, err
		}
		if err := checkReleasePackages(out); err != nil {
			return false, err
		}
		data := jsonObject(map[string]any{"release": out.ID, "name": out.Name})
		return true, s.addEvent(ctx, tx, Event{AccountID: r.AccountID, Type: EventReleaseCreated, Data: data, At: r.CreatedAt})
	})
	return out, err
}

// ErrBadRelease reports a release that cannot be assigned as a whole: two packages
// of one app, or two OS images.
var ErrBadRelease = errors.New("invalid release")

func checkReleasePackages(r Release) error {
	if len(r.Packages) == 0 {
		return fmt.Errorf("%w: no packages", ErrBadRelease)
	}
	seen := map[string]string{}
	for _, p := range r.Packages {
		key := p.Kind + "/" + p.Name
		if p.Kind == KindOS {
			key = KindOS
		}
		if prev, ok := seen[key]; ok {
			return fmt.Errorf("%w: %s %s appears twice (%s and %s)", ErrBadRelease, p.Kind, p.Name, prev, p.Version)
		}
		seen[key] = p.Version
	}
	return nil
}

// Release returns one of an account's releases by id or name.
func (s *Store) Release(ctx context.Context, account, idOrName string) (Release, error) {
	return s.release(ctx, s.db, account, idOrName)
}

func (s *Store) release(ctx context.Context, q querier, account, idOrName string) (Release, error) {
	r := Release{AccountID: account}
	var created int64
	err := q.QueryRowContext(ctx, s.q(`SELECT id, name, created_at FROM releases WHERE account_id = ? AND (id = ? OR name = ?)`),
		account, idOrName, idOrName).Scan(&r.ID, &r.Name, &created)
	if err != nil {
		return r, notFound(err, "release", idOrName)
	}
	r.CreatedAt = fromMicros(created)
	rows, err := q.QueryContext(ctx, s.q(`SELECT p.account_id, p.digest, p.kind, p.name, p.version, p.size, p.created_at
		FROM release_packages rp JOIN packages p ON p.account_id = rp.account_id AND p.digest = rp.package
		WHERE rp.release_id = ? ORDER BY rp.position`), r.ID)
	if err != nil {
		return r, err
	}
	defer rows.Close()
	r.Packages = []Package{}
	for rows.Next() {
		p, err := scanPackage(rows)
		if err != nil {
			return r, err
		}
		r.Packages = append(r.Packages, p)
		r.Size += p.Size
	}
	return r, rows.Err()
}

// Releases lists an account's releases, newest first, with their packages.
func (s *Store) Releases(ctx context.Context, account string) ([]Release, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id FROM releases WHERE account_id = ? ORDER BY created_at DESC, id`), account)
	if err != nil {
		return nil, err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := []Release{}
	for _, id := range ids {
		r, err := s.Release(ctx, account, id)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// BlobReferenced reports whether any account's package names the blob: the
// server's garbage collector keeps those.
func (s *Store) BlobReferenced(ctx context.Context, digest string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM package_blobs WHERE blob = ?`), digest).Scan(&n)
	return n > 0, err
}

// forUpdate is the row-locking suffix of a SELECT inside a transaction: SQLite
// transactions here take the write lock when they begin (immediate), PostgreSQL
// needs it per row.
func (s *Store) forUpdate() string {
	if s.dialect == Postgres {
		return " FOR UPDATE"
	}
	return ""
}
