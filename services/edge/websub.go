package edge

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/edge/internal/websub"
)

// webSub sets up the WebSub hub (POST /websub) and its topics
// (GET /v1/topics/{type}), both authenticated.
func webSub(base *service.Base, cat *catalog.Cache, cfg Config, quotas *quota.Cache) error {
	lease, longest := cmp.Or(cfg.WebSubLease, websub.DefaultLease), cmp.Or(cfg.WebSubMaxLease, websub.DefaultMaxLease)
	if lease > longest {
		return fmt.Errorf("edge: HERALD_EDGE_WEBSUB_LEASE (%s) is longer than HERALD_EDGE_WEBSUB_MAX_LEASE (%s)", lease, longest)
	}
	box, policy, err := outbound(cfg)
	if err != nil {
		return err
	}
	rdb, err := config.OpenRedis(cfg.RedisURL, cfg.WebSubSubscriptions+16)
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	h, err := websub.New(websub.Options{
		Redis: rdb, Catalog: cat, Quotas: quotas, Log: base.Log, Box: box, Policy: policy, Metrics: base.Metrics,
		PublicURL: cmp.Or(cfg.PublicURL, "http://"+cfg.Addr), Lease: cfg.WebSubLease, MaxLease: cfg.WebSubMaxLease,
		Retry: cfg.WebSubRetry, MaxActive: cfg.WebSubSubscriptions,
	})
	if err != nil {
		rdb.Close()
		return fmt.Errorf("edge: %w", err)
	}
	base.Server.HandleHTTP("POST "+websub.Path, base.Auth.Middleware(false, http.HandlerFunc(h.ServeHub)))
	base.Server.HandleHTTP("GET "+websub.TopicsPath+"{type}", base.Auth.Middleware(false, http.HandlerFunc(h.ServeTopic)))
	base.Go(func(ctx context.Context) error {
		defer rdb.Close()
		return h.Run(ctx)
	})
	return nil
}

// outbound is what webhooks, WebSub and browser tokens share: the box
// that seals their secrets (nil without HERALD_SECRET_KEY) and the guard
// of their outbound requests (HERALD_WEBHOOK_ALLOW).
func outbound(cfg Config) (*secretbox.Box, safehttp.Policy, error) {
	var box *secretbox.Box
	if cfg.SecretKey != "" {
		var err error
		if box, err = secretbox.New(strings.Split(cfg.SecretKey, ",")...); err != nil {
			return nil, safehttp.Policy{}, fmt.Errorf("edge: HERALD_SECRET_KEY: %w", err)
		}
	}
	policy, err := safehttp.ParsePolicy(cfg.WebhookAllow)
	if err != nil {
		return nil, safehttp.Policy{}, fmt.Errorf("edge: HERALD_WEBHOOK_ALLOW: %w", err)
	}
	policy.Resolver = cfg.WebhookResolver
	return box, policy, nil
}
