// Package agent is ternd: the device agent's services and their wiring. It keeps
// the device's state (state.db, blobs, layers, app bundles), installs verified
// packages, supervises app containers through internal/runtime, and serves the
// local API that `tern device` talks to.
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tern-iot/tern/internal/app"
)

// ErrNotInstalled reports an app name the device does not have.
var ErrNotInstalled = errors.New("app not installed")

// Desired states of an app.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
)

// AppRecord is one installed app in state.db.
//
// Invariant after a crash at any point: a record exists only once every blob and
// unpacked layer it names is complete on disk (they are written, synced and renamed
// into place before the record's transaction commits); a layer or blob no record
// names is garbage, and GC removes it.
type AppRecord struct {
	Package     app.PackageManifest `json:"package"`
	InstalledAt time.Time           `json:"installed_at"`
	// Desired is what the operator asked for: running (installed, started,
	// restarted per policy) or stopped (stop verb). It survives restarts of ternd
	// and of the device.
	Desired string `json:"desired"`
	// Broken is set when the app crashed too often in a window; only an explicit
	// start or restart clears it.
	Broken bool `json:"broken,omitempty"`
	// Restarts counts restarts by the supervisor since install or the last
	// explicit start.
	Restarts int `json:"restarts"`
	// LastExit is how the app's last container ended.
	LastExit *ExitInfo `json:"last_exit,omitempty"`
}

// ExitInfo is an app container's end, as ps and inspect show it.
type ExitInfo struct {
	Code      int       `json:"code"`
	Signal    int       `json:"signal,omitempty"`
	OOMKilled bool      `json:"oom_killed,omitempty"`
	Lost      bool      `json:"lost,omitempty"`
	Error     string    `json:"error,omitempty"`
	At        time.Time `json:"at"`
}

// Name is the app's name.
func (r *AppRecord) Name() string { return r.Package.App.Name }

// Version is the app's version.
func (r *AppRecord) Version() string { return r.Package.App.Version }

var (
	bucketApps = []byte("apps")
	bucketMeta = []byte("meta")
	keyBootID  = []byte("boot_id")
)

// Store is state.db: the device's durable state. Every change is one bbolt
// transaction, fsynced on commit.
type Store struct{ db *bolt.DB }

// OpenStore opens (or creates) state.db in dir.
func OpenStore(dir string) (*Store, error) {
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state.db: %w (is another ternd running on this data dir?)", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketApps, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Store{db: db}, nil
}

// Close closes state.db.
func (s *Store) Close() error { return s.db.Close() }

// Apps returns every installed app, by name.
func (s *Store) Apps() ([]*AppRecord, error) {
	var out []*AppRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApps).ForEach(func(k, v []byte) error {
			var r AppRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("state.db: app %s: %w", k, err)
			}
			out = append(out, &r)
			return nil
		})
	})
	return out, err
}

// App returns one app, or ErrNotInstalled.
func (s *Store) App(name string) (*AppRecord, error) {
	var r AppRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketApps).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("%w: %s", ErrNotInstalled, name)
		}
		return json.Unmarshal(v, &r)
	})
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// Put writes r.
func (s *Store) Put(r *AppRecord) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApps).Put([]byte(r.Name()), data)
	})
}

// Update applies fn to the app's record in one transaction.
func (s *Store) Update(name string, fn func(*AppRecord) error) (*AppRecord, error) {
	var r AppRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketApps)
		v := b.Get([]byte(name))
		if v == nil {
			return fmt.Errorf("%w: %s", ErrNotInstalled, name)
		}
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		if err := fn(&r); err != nil {
			return err
		}
		data, err := json.Marshal(&r)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), data)
	})
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// Delete removes an app's record.
func (s *Store) Delete(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApps).Delete([]byte(name))
	})
}

// NoteBoot records the kernel's boot id and reports whether it differs from the
// one recorded when ternd last started: the device rebooted in between.
func (s *Store) NoteBoot(id string) (rebooted bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		rebooted = string(b.Get(keyBootID)) != id
		return b.Put(keyBootID, []byte(id))
	})
	return rebooted, err
}

// currentBootID is the kernel's id for this boot: it changes at every reboot.
func currentBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
