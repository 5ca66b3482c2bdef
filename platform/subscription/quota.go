package subscription

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/quota"
)

// UseQuotas makes Subscribe refuse, and end, the streams of a subscription
// whose application or tenant is over a hard quota on delivered events, as
// the cache (which must be running) tells. Unacknowledged deliveries stay
// pending in the subscription and come again once the quota allows.
func (h *Handler) UseQuotas(c *quota.Cache) { h.quotas = c }

// overQuota is the refusal of sub's deliveries now, or nil.
func (h *Handler) overQuota(ctx context.Context, sub *registryv1.Subscription) *connect.Error {
	if h.quotas == nil {
		return nil
	}
	tenant := ""
	if app, err := h.m.cat.Application(ctx, sub.GetApplicationId()); err == nil {
		tenant = app.GetTenant()
	}
	wait, blocked := h.quotas.Blocked(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, tenant, sub.GetApplicationId())
	if !blocked {
		return nil
	}
	ce := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
		"application %s reached its hard quota of delivered events: unacknowledged and new deliveries of subscription %s stay pending until the period resets (in %v) or the quota is raised",
		sub.GetApplicationId(), sub.GetId(), wait.Round(time.Second)))
	ce.Meta().Set("Retry-After", quota.RetryAfter(wait))
	return ce
}

// quotaEnded is the cause a stream is cancelled with when a quota stops it.
type quotaEnded struct{ err *connect.Error }

func (q quotaEnded) Error() string { return q.err.Error() }

// watchQuota cancels a stream once its subscription goes over a hard quota.
func (h *Handler) watchQuota(ctx context.Context, sub *registryv1.Subscription, cancel context.CancelCauseFunc) {
	for {
		changed := h.quotas.Changed()
		if ce := h.overQuota(ctx, sub); ce != nil {
			cancel(quotaEnded{ce})
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}
