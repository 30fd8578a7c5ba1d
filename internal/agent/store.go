// Package agent is ternd: the device agent's services and their wiring. It keeps
// the device's state (state.db, blobs, layers, app bundles), installs verified
// packages, supervises app containers through internal/runtime, and serves the
// local API that `tern device` talks to.
package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tern-iot/tern/internal/app"
	"github.com/tern-iot/tern/internal/update"
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
	Package app.PackageManifest `json:"package"`
	// Previous is the version committed before Package (N-1), kept so that a
	// failed update or `tern device rollback` can return to it.
	Previous    *app.PackageManifest `json:"previous,omitempty"`
	InstalledAt time.Time            `json:"installed_at"`
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
	bucketApps   = []byte("apps")
	bucketMeta   = []byte("meta")
	bucketEvents = []byte("events")
	keyBootID    = []byte("boot_id")
	keyTxn       = []byte("update")
	keyOS        = []byte("os")
)

// maxEvents bounds the events kept on the device; the oldest are dropped first.
const maxEvents = 2000

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
		for _, b := range [][]byte{bucketApps, bucketMeta, bucketEvents} {
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

// Txn returns the update transaction in progress, or nil.
func (s *Store) Txn() (*update.Txn, error) {
	var t *update.Txn
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get(keyTxn)
		if v == nil {
			return nil
		}
		t = &update.Txn{}
		return json.Unmarshal(v, t)
	})
	return t, err
}

// SaveTxn writes the transaction in progress (nil clears it). bbolt fsyncs on
// commit, so the state is on disk before the machine acts on it.
func (s *Store) SaveTxn(t *update.Txn) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if t == nil {
			return tx.Bucket(bucketMeta).Delete(keyTxn)
		}
		data, err := json.Marshal(t)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keyTxn, data)
	})
}

// Event is one thing that happened on the device: an update transition, a crash,
// a health change. Events are kept on disk (the newest maxEvents) for `tern device
// events` and, once enrolled, for the server.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // update, exit, health, install, remove
	App     string    `json:"app,omitempty"`
	Version string    `json:"version,omitempty"`
	Txn     string    `json:"txn,omitempty"`
	From    string    `json:"from,omitempty"`
	To      string    `json:"to,omitempty"`
	Message string    `json:"message,omitempty"`
	// State, DesiredVersion and Campaign report on a desired-state document
	// (Kind "desired").
	State          string `json:"state,omitempty"`
	DesiredVersion uint64 `json:"desired_version,omitempty"`
	Campaign       string `json:"campaign,omitempty"`
}

// AddEvent appends an event, giving it the next sequence number.
func (s *Store) AddEvent(e Event) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		e.Seq = seq
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		data, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if err := b.Put(seqKey(seq), data); err != nil {
			return err
		}
		if seq > maxEvents {
			c := b.Cursor()
			for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= seq-maxEvents; k, _ = c.Next() {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Events returns the events after sequence number since, oldest first.
func (s *Store) Events(since uint64) ([]Event, error) {
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(seqKey(since + 1)); k != nil; k, v = c.Next() {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

func seqKey(n uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	return b[:]
}

// Commit applies a committed update to the app records in one transaction:
// each new version becomes current and the replaced one becomes N-1 (a manual
// rollback to N-1 drops the newer version instead). It is idempotent.
func (s *Store) Commit(t *update.Txn) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketApps)
		for _, c := range t.Changes {
			var pm app.PackageManifest
			if err := json.Unmarshal(c.Data, &pm); err != nil {
				return fmt.Errorf("update %s: change %s: %w", t.ID, c.Name, err)
			}
			var r AppRecord
			if v := b.Get([]byte(c.Name)); v != nil {
				if err := json.Unmarshal(v, &r); err != nil {
					return err
				}
			}
			if v := b.Get([]byte(c.Name)); v == nil || r.Version() != c.To {
				if v != nil && !t.Manual {
					prev := r.Package
					r.Previous = &prev
				} else {
					r.Previous = nil
				}
				r.Package = pm
				r.InstalledAt = time.Now()
			}
			r.Desired, r.Broken, r.Restarts, r.LastExit = DesiredRunning, false, 0, nil
			data, err := json.Marshal(&r)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(c.Name), data); err != nil {
				return err
			}
		}
		return nil
	})
}

// OS returns the OS state, or nil before the first OS-aware start.
func (s *Store) OS() (*OSState, error) {
	var st *OSState
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyOS); v != nil {
			st = &OSState{}
			return json.Unmarshal(v, st)
		}
		return nil
	})
	return st, err
}

// SaveOS writes the OS state.
func (s *Store) SaveOS(st *OSState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyOS, data) })
}
