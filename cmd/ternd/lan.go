package main

import (
	"context"

	"github.com/tern-iot/tern/internal/agent"
	"github.com/tern-iot/tern/internal/devmode"
	"github.com/tern-iot/tern/internal/discovery"
)

// serveLAN serves the local API on the LAN at addr while developer mode is on,
// with mutual TLS to paired workstations, announced over mDNS. It returns at
// once; the server follows developer mode until ctx ends.
func serveLAN(ctx context.Context, a *agent.Agent, addr string) error {
	id, err := a.DevIdentity()
	if err != nil {
		return err
	}
	log := a.Logger()
	srv := &devmode.Server{
		Addr: addr, Handler: a.Handler(), Device: a, Identity: id, Log: log,
		Advertise: func(ctx context.Context, info devmode.DeviceInfo, port int) (devmode.Announcement, error) {
			ann, err := discovery.Advertise(ctx, log, info, port)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return ann, nil
		},
	}
	go srv.Run(ctx)
	return nil
}
