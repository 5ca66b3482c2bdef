package publish

import (
	"fmt"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// refuseOverQuota returns the whole call's refusal when a hard quota on
// published events stops app (nil for the operator, who has none) or its
// tenant: RESOURCE_EXHAUSTED with Retry-After until the period resets.
// It asks the in-memory quota cache, never metering.
func (h *Handler) refuseOverQuota(app *registryv1.Application) error {
	if app == nil {
		return nil
	}
	wait, blocked := h.quotas.Blocked(meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, app.GetTenant(), app.GetId())
	if !blocked {
		return nil
	}
	return exhausted(wait, fmt.Errorf("application %s reached its hard quota of published events: nothing from this batch was stored; publishing resumes when the period resets (in %v) or the quota is raised",
		app.GetId(), wait.Round(time.Second)))
}
