// Package mesh runs the four Herald services in one process: what
// `herald dev` runs, and what end-to-end tests start.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/freeport"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/metering"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/heraldmesh/herald/services/router"
	"golang.org/x/sync/errgroup"
)

type runner interface {
	Listen() (net.Addr, error)
	Run(context.Context) error
}

// Mesh is the four services, built and bound.
type Mesh struct {
	Common config.Common
	names  []string
	svcs   []runner
}

// New builds the services and binds their ports. Addresses ending in :0 are
// replaced by the ports actually bound, so that the services find each
// other.
func New(common config.Common, log *slog.Logger) (*Mesh, error) {
	// Bind every port first: the services address each other by these.
	for _, addr := range []*string{&common.RegistryAddr, &common.RouterAddr, &common.MeteringAddr, &common.EdgeAddr} {
		if host, port, err := net.SplitHostPort(*addr); err == nil && port == "0" {
			// Below the ephemeral range: a port of it, free now, may be
			// an outgoing connection's by the time the service binds it.
			p, err := freeport.Pick()
			if err != nil {
				return nil, err
			}
			*addr = net.JoinHostPort(host, strconv.Itoa(p))
		}
	}
	m := &Mesh{Common: common}
	gcfg, err := registry.ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	gcfg.Common, gcfg.Logger = common, log
	reg, err := registry.New(gcfg)
	if err != nil {
		return nil, err
	}
	rcfg, err := router.ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	rcfg.Common, rcfg.Logger = common, log
	rt, err := router.New(rcfg)
	if err != nil {
		return nil, err
	}
	mcfg, err := metering.ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	mcfg.Common, mcfg.Logger = common, log
	mt, err := metering.New(mcfg)
	if err != nil {
		return nil, err
	}
	ecfg, err := edge.ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	ecfg.Common, ecfg.Logger, ecfg.Addr = common, log, ""
	ed, err := edge.New(ecfg)
	if err != nil {
		return nil, err
	}
	m.names = []string{"registry", "router", "metering", "edge"}
	m.svcs = []runner{reg, rt, mt, ed}
	for i, s := range m.svcs {
		if _, err := s.Listen(); err != nil {
			return nil, fmt.Errorf("%s: %w", m.names[i], err)
		}
	}
	return m, nil
}

// Run runs every service until ctx ends or one fails; then all stop.
func (m *Mesh) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for i, s := range m.svcs {
		g.Go(func() error {
			if err := s.Run(gctx); err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("%s: %w", m.names[i], err)
			}
			return nil
		})
	}
	return g.Wait()
}
