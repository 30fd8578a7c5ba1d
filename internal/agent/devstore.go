package agent

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tern-iot/tern/internal/devmode"
)

// Developer mode's part of state.db: bucket "devmode" holds the mode's state
// under key "state"; bucket "dev_pairings" maps a workstation certificate's
// fingerprint to its Pairing. Both buckets are created on first write; a store
// that never had developer mode reads as off, with no pairings.
var (
	bucketDev      = []byte("devmode")
	bucketPairings = []byte("dev_pairings")
	keyDevState    = []byte("state")
)

// devState is developer mode's persisted state.
//
// Invariant after a crash at any point: Enabled is what the last committed
// enable or disable said, so a device never comes back with developer mode on
// unless root turned it on and it stayed on. A code is used at most once:
// the transaction that stores a pairing deletes the code it used. LAN is only
// a report of the ternd that wrote it; the next ternd's LAN server rewrites it
// when it starts.
type devState struct {
	Enabled bool          `json:"enabled"`
	Since   time.Time     `json:"since,omitempty"` // when it was last enabled or disabled
	Code    *devmode.Code `json:"code,omitempty"`  // the pairing code shown, if any
	LAN     string        `json:"lan,omitempty"`   // where the LAN API listens; "" when closed
	// LANServer is set once a LAN server reported: only then do enable and
	// disable wait for it to open or close (an agent run without one, as in
	// tests, answers at once).
	LANServer bool `json:"lan_server,omitempty"`
	// Denied is set while the last desired-state document the device accepted
	// from its server says that the account refuses developer mode.
	Denied bool `json:"denied,omitempty"`
}

// devState reads developer mode's state (off when never set).
func (s *Store) devState() (devState, error) {
	var st devState
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDev)
		if b == nil {
			return nil
		}
		if v := b.Get(keyDevState); v != nil {
			return json.Unmarshal(v, &st)
		}
		return nil
	})
	return st, err
}

// updateDevState applies fn to developer mode's state in one transaction; fn
// may also touch the pairings bucket it is given.
func (s *Store) updateDevState(fn func(st *devState, pairings *bolt.Bucket) error) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketDev)
		if err != nil {
			return err
		}
		pb, err := tx.CreateBucketIfNotExists(bucketPairings)
		if err != nil {
			return err
		}
		var st devState
		if v := b.Get(keyDevState); v != nil {
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("state.db: developer mode: %w", err)
			}
		}
		if err := fn(&st, pb); err != nil {
			return err
		}
		data, err := json.Marshal(st)
		if err != nil {
			return err
		}
		return b.Put(keyDevState, data)
	})
}

// pairings returns the paired workstations, by fingerprint.
func (s *Store) pairings() ([]devmode.Pairing, error) {
	var out []devmode.Pairing
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPairings)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var p devmode.Pairing
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("state.db: pairing %s: %w", k, err)
			}
			out = append(out, p)
			return nil
		})
	})
	return out, err
}

// paired reports whether fingerprint is a paired workstation's certificate.
func (s *Store) paired(fingerprint string) bool {
	ok := false
	s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketPairings); b != nil {
			ok = b.Get([]byte(fingerprint)) != nil
		}
		return nil
	})
	return ok
}

// putPairing stores p in the pairings bucket of an update transaction.
func putPairing(b *bolt.Bucket, p devmode.Pairing) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return b.Put([]byte(p.Fingerprint), data)
}
