package webhook

import (
	"context"
	"fmt"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/usage"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// waitQuota holds a delivery while a hard quota on delivered events stops
// the endpoint's application or its tenant: no request, no attempt spent;
// the delivery stays pending (its ack timeout kept fresh by keepHeld) and
// goes out once the period resets or the quota is lifted. The first wait of
// a delivery in a period is reported as a REFUSED usage record, never as
// DELIVERED. It reports false when ctx ended first.
func (r *runner) waitQuota(ctx context.Context, j job) bool {
	q := r.e.o.Quotas
	if q == nil {
		return true
	}
	refused := false
	for {
		changed := q.Changed()
		until, blocked := q.Until(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, r.tenant(ctx), r.ep.app)
		if !blocked {
			return true
		}
		if !refused {
			refused = true
			if err := usage.Append(ctx, r.e.o.Redis, refusedRecord(r.ep, r.tenant(ctx), j, until)); err != nil {
				r.e.o.Log.Warn("refused webhook delivery not reported to metering", "subscription", r.ep.id, "err", err)
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
	}
}

// tenant is the tenant of the endpoint's application, as the catalog has
// it ("" when it cannot be told: only application quotas apply then).
func (r *runner) tenant(ctx context.Context) string {
	if r.e.o.Catalog == nil {
		return ""
	}
	app, err := r.e.o.Catalog.Application(ctx, r.ep.app)
	if err != nil {
		return ""
	}
	return app.GetTenant()
}

// refusedRecord is the usage record of a delivery held by a quota: once per
// delivery and blocked period (the id is the fold's idempotency key).
func refusedRecord(ep *endpoint, tenant string, j job, until time.Time) *meteringv1.UsageRecord {
	return &meteringv1.UsageRecord{
		Id:            fmt.Sprintf("refused/webhook/%s/%s/%d", ep.id, j.cursor, until.UnixMilli()),
		Tenant:        tenant,
		ApplicationId: ep.app, EventType: j.ev.GetType(), Metric: meteringv1.UsageMetric_USAGE_METRIC_REFUSED,
		Channel: Channel, Quantity: 1, Subscription: ep.id, EventSource: j.ev.GetSource(), EventId: j.ev.GetId(),
		Attempt: int32(j.tries + 1), Time: timestamppb.Now(),
	}
}
