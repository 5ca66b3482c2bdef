package websub

import (
	"context"
	"fmt"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/usage"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// waitQuota holds a delivery while a hard quota on delivered events stops
// the subscription's application or its tenant: no request, no attempt
// spent; the delivery stays pending with this process (its ack timeout
// extended every second) and goes out once the period resets or the quota
// is lifted. The first wait in a period is a REFUSED usage record. It
// reports false when ctx ended first (the delivery then comes again).
func (r *runner) waitQuota(ctx context.Context, d *routerv1.SubscribeResponse) bool {
	q := r.h.o.Quotas
	if q == nil {
		return true
	}
	refused := false
	for {
		changed := q.Changed()
		tenant := r.tenant(ctx)
		until, blocked := q.Until(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, tenant, r.rec.App)
		if !blocked {
			return true
		}
		if !refused {
			refused = true
			ev := d.GetEvent()
			if err := usage.Append(ctx, r.h.o.Redis, &meteringv1.UsageRecord{
				Id:     fmt.Sprintf("refused/websub/%s/%s/%d", r.rec.ID, d.GetCursor(), until.UnixMilli()),
				Tenant: tenant, ApplicationId: r.rec.App, EventType: ev.GetType(), Metric: meteringv1.UsageMetric_USAGE_METRIC_REFUSED,
				Channel: Channel, Quantity: 1, Subscription: r.rec.ID, EventSource: ev.GetSource(), EventId: ev.GetId(),
				Attempt: max(d.GetAttempt(), 1), Time: timestamppb.Now(),
			}); err != nil {
				r.h.o.Log.Warn("refused websub delivery not reported to metering", "subscription", r.rec.ID, "err", err)
			}
		}
		wake := time.NewTimer(min(time.Until(until), time.Second))
		select {
		case <-ctx.Done():
			wake.Stop()
			return false
		case <-changed:
		case <-wake.C:
		}
		wake.Stop()
		if _, err := r.h.mgr.Extend(ctx, r.rec.ID, r.h.holder, []string{d.GetAckId()}); err != nil && ctx.Err() == nil {
			r.h.o.Log.Warn("websub delivery held by a quota not extended", "subscription", r.rec.ID, "err", err)
		}
	}
}

func (r *runner) tenant(ctx context.Context) string {
	app, err := r.h.o.Catalog.Application(ctx, r.rec.App)
	if err != nil {
		return ""
	}
	return app.GetTenant()
}
