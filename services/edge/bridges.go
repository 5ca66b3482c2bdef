package edge

import (
	"context"
	"fmt"

	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
	"github.com/heraldmesh/herald/services/edge/internal/bridge/amqp"
	"github.com/heraldmesh/herald/services/edge/internal/bridge/kafka"
	"github.com/heraldmesh/herald/services/edge/internal/bridge/lake"
	"github.com/heraldmesh/herald/services/edge/internal/bridge/mqtt"
)

// bridgeSystems are the adapters this edge runs bridges with.
func bridgeSystems() bridge.Systems {
	return bridge.Systems{
		Sinks: map[string]func(bridge.Config) (bridge.Sink, error){
			"lake":  func(c bridge.Config) (bridge.Sink, error) { return lake.New(c) },
			"mqtt":  func(c bridge.Config) (bridge.Sink, error) { return mqtt.NewSink(c) },
			"kafka": func(c bridge.Config) (bridge.Sink, error) { return kafka.NewSink(c) },
			"amqp":  func(c bridge.Config) (bridge.Sink, error) { return amqp.NewSink(c) },
		},
		Sources: map[string]func(bridge.Config) (bridge.Source, error){
			"mqtt":  func(c bridge.Config) (bridge.Source, error) { return mqtt.NewSource(c) },
			"kafka": func(c bridge.Config) (bridge.Source, error) { return kafka.NewSource(c) },
			"amqp":  func(c bridge.Config) (bridge.Source, error) { return amqp.NewSource(c) },
		},
	}
}

// bridges sets up the bridge engine and BridgeService.
func bridges(base *service.Base, cat *catalog.Cache, cfg Config) error {
	box, _, err := outbound(cfg)
	if err != nil {
		return err
	}
	// The sinks' consumers wait for events on connections blocked in Redis,
	// one per stream they read (platform/subscription's watches): a pool of
	// their own.
	rdb, err := config.OpenRedis(cfg.RedisURL, cfg.Bridges+16)
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	routerURL := rpc.BaseURL(cfg.RouterAddr)
	engine := bridge.New(bridge.Options{
		Redis: rdb, Catalog: cat, Log: base.Log, Box: box, Metrics: base.Metrics,
		Router: func(key string) routerv1connect.RouterServiceClient {
			return routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), routerURL, rpc.ClientOptions(key)...)
		},
		Systems: bridgeSystems(), MaxBridges: cfg.Bridges,
		LeaseTTL: cfg.BridgeLease, AckTimeout: cfg.BridgeAckTimeout,
	})
	path, handler := edgev1connect.NewBridgeServiceHandler(&bridge.API{E: engine}, base.HandlerOptions()...)
	base.Server.Handle(path, handler)
	base.Go(func(ctx context.Context) error {
		defer rdb.Close()
		return engine.Run(ctx)
	})
	return nil
}
