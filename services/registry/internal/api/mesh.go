package api

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
)

// The mesh's own catalog: events about Herald itself are ordinary catalog
// events, in the herald domain, deliverable like any other.
const (
	// MeshDomain is the domain of Herald's own event types.
	MeshDomain = "herald"
	// EndpointDisabledType is published when a failing webhook endpoint is
	// disabled.
	EndpointDisabledType = "herald.endpoint.disabled"
	// QuotaWarningType is published by metering when a soft quota reaches
	// 80% and 100% of its limit, once each per period.
	QuotaWarningType = "herald.quota.warning"
	// InvoiceFinalizedType is published by metering when an invoice is
	// finalized, once per invoice (its id is the event id).
	InvoiceFinalizedType = "herald.invoice.finalized"
)

const invoiceFinalizedSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["invoice_id", "tenant", "month", "currency", "subtotal_minor", "total_minor", "finalize_time"],
  "properties": {
    "invoice_id": {"type": "string", "description": "The invoice (BillingService.GetInvoice)."},
    "application_id": {"type": "string", "description": "The application billed; empty for a tenant invoice."},
    "tenant": {"type": "string", "description": "The tenant billed, or the application's tenant."},
    "month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$", "description": "The month billed (YYYY-MM, in the plan's time zone)."},
    "currency": {"type": "string", "description": "ISO 4217 code."},
    "plan_id": {"type": "string", "description": "The plan priced with."},
    "plan_version": {"type": "integer", "description": "The plan version priced with."},
    "subtotal_minor": {"type": "integer", "description": "Sum of the lines, in minor units."},
    "total_minor": {"type": "integer", "description": "Amount due at finalization, in minor units."},
    "finalize_time": {"type": "string", "format": "date-time", "description": "When it was finalized (RFC 3339)."}
  }
}`

const quotaWarningSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["quota_id", "scope", "subject", "metric", "period", "limit", "used", "threshold", "period_start", "resets_at"],
  "properties": {
    "quota_id": {"type": "string", "description": "The quota (QuotaService)."},
    "scope": {"enum": ["application", "tenant"], "description": "What the quota counts for."},
    "subject": {"type": "string", "description": "The application id or the tenant."},
    "tenant": {"type": "string", "description": "The tenant the quota belongs to."},
    "metric": {"enum": ["published", "delivered"], "description": "What is counted."},
    "period": {"enum": ["day", "month"], "description": "The quota's period, in UTC."},
    "limit": {"type": "integer", "minimum": 0, "description": "Events allowed per period."},
    "used": {"type": "integer", "minimum": 0, "description": "Events counted in the period when the threshold was seen reached."},
    "threshold": {"enum": [80, 100], "description": "The percentage of the limit reached."},
    "period_start": {"type": "string", "format": "date-time", "description": "Start of the period (RFC 3339)."},
    "resets_at": {"type": "string", "format": "date-time", "description": "End of the period (RFC 3339)."}
  }
}`

const endpointDisabledSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["subscription_id", "application_id", "reason", "disable_time"],
  "properties": {
    "subscription_id": {"type": "string", "description": "The webhook subscription whose endpoint was disabled."},
    "application_id": {"type": "string", "description": "The consumer application that owns it."},
    "reason": {"type": "string", "description": "Why it was disabled, e.g. the failures that led to it."},
    "disable_time": {"type": "string", "format": "date-time", "description": "When it was disabled (RFC 3339)."}
  }
}`

const endpointPingSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["subscription_id", "application_id"],
  "properties": {
    "subscription_id": {"type": "string", "description": "The webhook subscription being validated."},
    "application_id": {"type": "string", "description": "The consumer application that owns it."}
  }
}`

// meshCatalog is what EnsureMeshCatalog registers.
func meshCatalog() (*registryv1.Domain, []*registryv1.EventType) {
	d := &registryv1.Domain{Name: MeshDomain, Owner: "herald", Description: "Events about the mesh itself, published by Herald."}
	types := []*registryv1.EventType{
		{
			Name: EndpointDisabledType, Owner: "herald", Schema: endpointDisabledSchema,
			Description: "A webhook endpoint kept failing for its disable_after period (or answered 410 Gone) and was disabled: nothing is delivered to it until it is enabled again (UpdateSubscription, webhook.disabled).",
		},
		{
			Name: QuotaWarningType, Owner: "herald", Schema: quotaWarningSchema,
			Description: "A soft quota reached 80% or 100% of its limit for the current period: published once per threshold and period by metering.",
		},
		{
			Name: InvoiceFinalizedType, Owner: "herald", Schema: invoiceFinalizedSchema,
			Description: "An invoice was finalized by metering (BillingService.FinalizeInvoice): published once per invoice, its id the event id; the invoice is immutable from then on.",
		},
		{
			Name: PingType, Owner: "herald", Schema: endpointPingSchema,
			Description: "The validation ping a webhook endpoint gets when it is created, enabled or moved to another URL and does not do the CloudEvents validation handshake; it must answer with a 2xx.",
		},
	}
	return d, types
}

// EnsureMeshCatalog registers the herald domain and its event types
// through the same handlers, as the operator, so that the writes are
// checked, recorded and streamed by Watch like any other. What exists is
// left as it is: a restart, or another replica starting at the same time,
// changes nothing.
func (h *Handler) EnsureMeshCatalog(ctx context.Context) error {
	ctx = auth.WithPrincipal(ctx, auth.Principal{Admin: true})
	d, types := meshCatalog()
	if _, err := h.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: d})); err != nil && !exists(err) {
		return fmt.Errorf("register domain %s: %w", d.GetName(), err)
	}
	for _, et := range types {
		if _, err := h.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et})); err != nil && !exists(err) {
			return fmt.Errorf("register event type %s: %w", et.GetName(), err)
		}
	}
	return nil
}

func exists(err error) bool {
	var ce *connect.Error
	return errors.As(err, &ce) && ce.Code() == connect.CodeAlreadyExists
}
