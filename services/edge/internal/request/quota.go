package request

import (
	"fmt"
	"time"

	"connectrpc.com/connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/quota"
)

// UseQuotas makes every channel refuse, and end, the requests of
// applications and tenants over a hard quota on delivered events, as the
// cache (which must be running) tells: from memory, never asking metering.
func (p *Parser) UseQuotas(c *quota.Cache) {
	p.quotas = c
	p.guards.quotas = c
}

// OverQuota is the refusal of app's deliveries when a hard quota on
// delivered events stops it or its tenant: RESOURCE_EXHAUSTED with
// Retry-After (429 on HTTP). Nil when it may receive, or for the operator
// (app nil), who has no quota.
func OverQuota(c *quota.Cache, app *registryv1.Application) *connect.Error {
	if app == nil {
		return nil
	}
	wait, blocked := c.Blocked(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, app.GetTenant(), app.GetId())
	if !blocked {
		return nil
	}
	ce := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(
		"application %s reached its hard quota of delivered events: delivery resumes when the period resets (in %v) or the quota is raised",
		app.GetId(), wait.Round(time.Second)))
	ce.Meta().Set("Retry-After", quota.RetryAfter(wait))
	return ce
}

// IsQuota reports whether a refusal is a quota's.
func IsQuota(ce *connect.Error) bool { return ce != nil && ce.Code() == connect.CodeResourceExhausted }
