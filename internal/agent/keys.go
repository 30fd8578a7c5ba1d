package agent

import (
	"slices"

	"github.com/tern-iot/tern/internal/trust"
)

// trustedKeys are the keys a package may be signed by: the release keys the device
// was provisioned with or received at enrollment and, only while developer mode is
// on, paired developers' keys.
func (a *Agent) trustedKeys() []trust.PublicKey {
	a.keysMu.Lock()
	keys := slices.Clone(a.cfg.Keys)
	a.keysMu.Unlock()
	return append(keys, a.developerKeys()...)
}

// AddTrustedKeys adds release keys (the account's, received at enrollment).
func (a *Agent) AddTrustedKeys(keys ...trust.PublicKey) {
	a.keysMu.Lock()
	defer a.keysMu.Unlock()
	for _, k := range keys {
		if !slices.ContainsFunc(a.cfg.Keys, func(h trust.PublicKey) bool { return h.ID == k.ID }) {
			a.cfg.Keys = append(a.cfg.Keys, k)
		}
	}
}
