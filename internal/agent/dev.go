package agent

import (
	"net/http"

	"github.com/tern-iot/tern/internal/trust"
)

// developerKeys are the paired developers' keys, trusted only while developer mode
// is on. Developer mode is not built yet: none.
func (a *Agent) developerKeys() []trust.PublicKey { return nil }

// registerDevRoutes adds the developer-mode endpoints to the local API. Developer
// mode is not built yet: none.
func (a *Agent) registerDevRoutes(mux *http.ServeMux) {}
