package agent

import (
	"slices"

	"github.com/tern-iot/tern/internal/trust"
)

// trustedKeys are the keys a package may be signed by: the release keys the device
// was provisioned with and, only while developer mode is on, paired developers' keys.
func (a *Agent) trustedKeys() []trust.PublicKey {
	return append(slices.Clone(a.cfg.Keys), a.developerKeys()...)
}
