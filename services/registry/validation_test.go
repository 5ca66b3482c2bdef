package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestRefusals checks every refused request: its code, that its message
// says what is wrong, and that nothing was written (the catalog revision
// did not move).
func TestRefusals(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	paid := e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"})
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.voided", Lifecycle: registryv1.Lifecycle_LIFECYCLE_RETIRED})
	app, appKey := e.createApp(t, &registryv1.Application{Name: "consumer", Grants: []*registryv1.Grant{subscribe("*")}})
	asApp := e.as(appKey)

	typeWith := func(edit func(et *registryv1.EventType)) *registryv1.CreateEventTypeRequest {
		et := &registryv1.EventType{Name: "billing.refund.issued", Schema: invoiceSchema}
		edit(et)
		return &registryv1.CreateEventTypeRequest{EventType: et}
	}
	createType := func(edit func(et *registryv1.EventType)) func() error {
		return func() error {
			_, err := e.admin.CreateEventType(ctx, connect.NewRequest(typeWith(edit)))
			return err
		}
	}
	updateType := func(edit func(et *registryv1.EventType)) func() error {
		return func() error {
			et := proto.Clone(paid).(*registryv1.EventType)
			edit(et)
			_, err := e.admin.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: et}))
			return err
		}
	}
	createDomain := func(d *registryv1.Domain) func() error {
		return func() error {
			_, err := e.admin.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: d}))
			return err
		}
	}
	createProduct := func(p *registryv1.Product) func() error {
		return func() error {
			_, err := e.admin.CreateProduct(ctx, connect.NewRequest(&registryv1.CreateProductRequest{Product: p}))
			return err
		}
	}
	createApp := func(a *registryv1.Application) func() error {
		return func() error {
			_, err := e.admin.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: a}))
			return err
		}
	}
	createSub := func(s *registryv1.Subscription) func() error {
		return func() error {
			_, err := e.admin.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: s}))
			return err
		}
	}
	stream := &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}}

	for _, c := range []struct {
		name      string
		call      func() error
		code      connect.Code
		fragments []string
	}{
		// Names.
		{"domain name with capitals", createDomain(&registryv1.Domain{Name: "Billing"}), connect.CodeInvalidArgument, []string{"Billing"}},
		{"domain name with dots", createDomain(&registryv1.Domain{Name: "billing.eu"}), connect.CodeInvalidArgument, []string{"one segment"}},
		{"domain without name", createDomain(&registryv1.Domain{}), connect.CodeInvalidArgument, []string{"domain.name is required"}},
		{"domain that exists", createDomain(&registryv1.Domain{Name: "billing"}), connect.CodeAlreadyExists, []string{"billing"}},
		{"type name of one segment", createType(func(et *registryv1.EventType) { et.Name = "billing" }), connect.CodeInvalidArgument, []string{"two dotted segments"}},
		{"type name with capitals", createType(func(et *registryv1.EventType) { et.Name = "billing.Invoice.paid" }), connect.CodeInvalidArgument, []string{"Invoice"}},
		{"type that exists", createType(func(et *registryv1.EventType) { et.Name = "billing.invoice.paid" }), connect.CodeAlreadyExists, []string{"billing.invoice.paid"}},
		{"product name with underscore", createProduct(&registryv1.Product{Name: "pro_plan", EventTypes: []string{"billing.*"}}), connect.CodeInvalidArgument, []string{"pro_plan"}},

		// Schemas.
		{"type without schema", createType(func(et *registryv1.EventType) { et.Schema = "" }), connect.CodeInvalidArgument, []string{"schema is required"}},
		{"schema that is not JSON", createType(func(et *registryv1.EventType) { et.Schema = `{"type":` }), connect.CodeInvalidArgument, []string{"not valid JSON"}},
		{"schema that does not compile", createType(func(et *registryv1.EventType) { et.Schema = `{"type":"fish"}` }), connect.CodeInvalidArgument, []string{"does not compile"}},
		{"oversized schema", createType(func(et *registryv1.EventType) {
			et.Schema = `{"description":"` + strings.Repeat("x", 300<<10) + `"}`
		}), connect.CodeInvalidArgument, []string{"more than the"}},
		{"remote $ref", createType(func(et *registryv1.EventType) {
			et.Schema = `{"$ref":"https://example.com/schemas/money.json"}`
		}), connect.CodeInvalidArgument, []string{"https://example.com/schemas/money.json"}},
		{"new version of a retired type", func() error {
			_, err := e.admin.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{EventType: "billing.invoice.voided", Schema: `{}`}))
			return err
		}, connect.CodeFailedPrecondition, []string{"billing.invoice.voided", "retired"}},
		{"new version of an unknown type", func() error {
			_, err := e.admin.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{EventType: "billing.invoice.lost", Schema: `{}`}))
			return err
		}, connect.CodeNotFound, []string{"billing.invoice.lost"}},

		// Metadata.
		{"deprecated without sunset", createType(func(et *registryv1.EventType) { et.Lifecycle = registryv1.Lifecycle_LIFECYCLE_DEPRECATED }), connect.CodeInvalidArgument, []string{"sunset_time"}},
		{"unknown visibility", createType(func(et *registryv1.EventType) { et.Visibility = 42 }), connect.CodeInvalidArgument, []string{"visibility"}},
		{"negative retention", createType(func(et *registryv1.EventType) {
			et.Retention = &registryv1.RetentionPolicy{MaxAge: durationpb.New(-1)}
		}), connect.CodeInvalidArgument, []string{"max_age"}},
		{"example that does not match", createType(func(et *registryv1.EventType) {
			et.Examples = []*registryv1.Example{{Name: "negative", Data: `{"invoice_id":"in_1","amount":-5}`}}
		}), connect.CodeInvalidArgument, []string{`example "negative"`, "/amount"}},
		{"example naming a version that does not exist", createType(func(et *registryv1.EventType) {
			et.Examples = []*registryv1.Example{{Name: "future", Data: `{}`, SchemaVersion: 3}}
		}), connect.CodeInvalidArgument, []string{`example "future"`, "version 3"}},
		{"example that is not JSON", createType(func(et *registryv1.EventType) {
			et.Examples = []*registryv1.Example{{Name: "broken", Data: `{`}}
		}), connect.CodeInvalidArgument, []string{`example "broken"`}},
		{"update of an unknown type", func() error {
			_, err := e.admin.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: &registryv1.EventType{Name: "billing.nothing.here"}}))
			return err
		}, connect.CodeNotFound, []string{"billing.nothing.here"}},
		{"update from a stale revision", updateType(func(et *registryv1.EventType) { et.Revision-- }), connect.CodeAborted, []string{"billing.invoice.paid", "revision " + itoa(paid.GetRevision()-1), "revision " + itoa(paid.GetRevision())}},
		{"update with an example that does not match", updateType(func(et *registryv1.EventType) {
			et.Examples = []*registryv1.Example{{Name: "no id", Data: `{"amount":1}`}}
		}), connect.CodeInvalidArgument, []string{`example "no id"`, "invoice_id"}},
		{"update changing partitions", updateType(func(et *registryv1.EventType) { et.Partitions = 4 }), connect.CodeFailedPrecondition, []string{"partitions"}},

		// References.
		{"product naming an unknown type", createProduct(&registryv1.Product{Name: "pro", EventTypes: []string{"billing.invoice.lost"}}), connect.CodeNotFound, []string{"billing.invoice.lost"}},
		{"product with a bad pattern", createProduct(&registryv1.Product{Name: "pro", EventTypes: []string{"billing.*.paid"}}), connect.CodeInvalidArgument, []string{"billing.*.paid"}},
		{"product without types", createProduct(&registryv1.Product{Name: "pro"}), connect.CodeInvalidArgument, []string{"event_types"}},
		{"subscription of an unknown application", createSub(&registryv1.Subscription{ApplicationId: "app_nobody", Types: []string{"billing.*"}, Channel: stream}), connect.CodeNotFound, []string{"app_nobody"}},
		{"subscription to an unknown type", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.invoice.lost"}, Channel: stream}), connect.CodeNotFound, []string{"billing.invoice.lost"}},
		{"subscription to a retired type", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.invoice.voided"}, Channel: stream}), connect.CodeFailedPrecondition, []string{"billing.invoice.voided"}},
		{"subscription without channel", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.*"}}), connect.CodeInvalidArgument, []string{"channel"}},
		{"webhook with a relative URL", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.*"},
			Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: "/hooks/herald"}}}), connect.CodeInvalidArgument, []string{"/hooks/herald"}},
		{"webhook with another scheme", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.*"},
			Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: "ftp://example.com/x"}}}), connect.CodeInvalidArgument, []string{"http"}},
		{"start at a malformed cursor", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.*"}, Channel: stream,
			Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "yesterday"}}}), connect.CodeInvalidArgument, []string{"yesterday"}},
		{"ack timeout too short", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.*"}, Channel: stream,
			Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(time.Millisecond)}}), connect.CodeInvalidArgument, []string{"ack_timeout", "1ms", "100ms"}},
		{"ack timeout too long", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.*"}, Channel: stream,
			Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(13 * time.Hour)}}), connect.CodeInvalidArgument, []string{"ack_timeout", "12h"}},
		{"too many attempts", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.*"}, Channel: stream,
			Delivery: &registryv1.DeliveryPolicy{MaxAttempts: 1001}}), connect.CodeInvalidArgument, []string{"max_attempts", "1001"}},
		{"filter that is not boolean", createSub(&registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{"billing.*"}, Channel: stream,
			Filter: `data.amount`}), connect.CodeInvalidArgument, []string{"filter", "boolean"}},

		// Applications and keys.
		{"application without name", createApp(&registryv1.Application{}), connect.CodeInvalidArgument, []string{"name"}},
		{"grant without action", createApp(&registryv1.Application{Name: "x", Grants: []*registryv1.Grant{{Pattern: "billing.*"}}}), connect.CodeInvalidArgument, []string{"grants[0].action"}},
		{"grant with a bad pattern", createApp(&registryv1.Application{Name: "x", Grants: []*registryv1.Grant{publish("billing*")}}), connect.CodeInvalidArgument, []string{"grants[0].pattern"}},
		{"key for an unknown application", func() error {
			_, err := e.admin.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: "app_nobody"}))
			return err
		}, connect.CodeNotFound, []string{"app_nobody"}},
		{"negative rotation overlap", func() error {
			_, err := e.admin.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: app.GetId(), RotateOverlap: durationpb.New(-1)}))
			return err
		}, connect.CodeInvalidArgument, []string{"rotate_overlap"}},
		{"authenticate a malformed hash", func() error {
			_, err := e.admin.AuthenticateKey(ctx, connect.NewRequest(&registryv1.AuthenticateKeyRequest{KeyHash: "abc"}))
			return err
		}, connect.CodeInvalidArgument, []string{"key_hash"}},

		// Writes and operator reads need the admin key.
		{"create a type with an application key", func() error {
			_, err := asApp.CreateEventType(ctx, connect.NewRequest(typeWith(func(*registryv1.EventType) {})))
			return err
		}, connect.CodePermissionDenied, []string{"admin"}},
		{"create a domain with an application key", func() error {
			_, err := asApp.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: &registryv1.Domain{Name: "shop"}}))
			return err
		}, connect.CodePermissionDenied, []string{"admin"}},
		{"authenticate with an application key", func() error {
			_, err := asApp.AuthenticateKey(ctx, connect.NewRequest(&registryv1.AuthenticateKeyRequest{KeyHash: strings.Repeat("0", 64)}))
			return err
		}, connect.CodePermissionDenied, nil},
		{"watch with an application key", func() error {
			s, err := asApp.Watch(ctx, connect.NewRequest(&registryv1.WatchRequest{}))
			if err != nil {
				return err
			}
			defer s.Close()
			for s.Receive() {
			}
			return s.Err()
		}, connect.CodePermissionDenied, nil},
		{"no key at all", func() error {
			_, err := e.as("").ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))
			return err
		}, connect.CodeUnauthenticated, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.revision(t)
			wantCode(t, c.name, c.call(), c.code, c.fragments...)
			if after := e.revision(t); after != before {
				t.Errorf("the catalog revision moved from %d to %d: a refused request wrote something", before, after)
			}
		})
	}
}
