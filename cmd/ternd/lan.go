package main

import (
	"context"

	"github.com/tern-iot/tern/internal/agent"
)

// serveLAN serves the local API on the LAN while developer mode is on. Developer
// mode is not built yet: nothing is served.
func serveLAN(ctx context.Context, a *agent.Agent, addr string) error { return nil }
