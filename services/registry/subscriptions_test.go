package registry_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestSubscriptions(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Visibility: registryv1.Visibility_VISIBILITY_PARTNER})
	e.createType(t, &registryv1.EventType{Name: "billing.audit.logged"}) // internal
	e.createType(t, &registryv1.EventType{Name: "identity.user.created", Visibility: registryv1.Visibility_VISIBILITY_PUBLIC})
	partner, partnerKey := e.createApp(t, &registryv1.Application{
		Name: "partner", Audience: registryv1.Audience_AUDIENCE_PARTNER,
		Grants: []*registryv1.Grant{subscribe("billing.*"), publish("identity.*")},
	})
	other, otherKey := e.createApp(t, &registryv1.Application{Name: "other", Grants: []*registryv1.Grant{subscribe("*")}})
	asPartner := e.as(partnerKey)

	// The application subscribes itself (application_id defaults to the
	// caller), with a filter and a webhook (created disabled: nothing
	// answers at partner.example, see webhooks_test.go for validation).
	created := must(asPartner.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		Types:   []string{"billing.invoice.paid"},
		Filter:  `event.type == "billing.invoice.paid" && data.amount > 1000`,
		Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: "https://partner.example/hooks/herald", Disabled: true}},
	}}))).msg(t).GetSubscription()
	if !strings.HasPrefix(created.GetId(), "sub_") || created.GetApplicationId() != partner.GetId() || created.GetRevision() == 0 || created.GetCreateTime() == nil {
		t.Errorf("created: %v", created)
	}
	// The delivery policy's defaults are filled in.
	if d := created.GetDelivery(); d.GetAckTimeout().AsDuration() != 30*time.Second || d.GetMaxAttempts() != 10 {
		t.Errorf("default delivery policy: %v", d)
	}
	got := must(asPartner.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: created.GetId()}))).msg(t).GetSubscription()
	if got.GetFilter() != created.GetFilter() || got.GetWebhook().GetUrl() != "https://partner.example/hooks/herald" {
		t.Errorf("get: %v", got)
	}
	// A pattern within the grant, from a cursor, over a stream.
	second := must(asPartner.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		Types:   []string{"billing.invoice.*"},
		Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		Start:   &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "1718000000000-0"}},
	}}))).msg(t).GetSubscription()
	otherSub := must(e.admin.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: other.GetId(), Types: []string{"*"}, Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
	}}))).msg(t).GetSubscription()

	ids := func(subs []*registryv1.Subscription) []string {
		var out []string
		for _, s := range subs {
			out = append(out, s.GetId())
		}
		return out
	}
	own := must(asPartner.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))).msg(t).GetSubscriptions()
	if got, want := ids(own), []string{created.GetId(), second.GetId()}; !slices.Equal(got, want) {
		t.Errorf("own subscriptions: %v, want %v", got, want)
	}
	all := must(e.admin.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))).msg(t).GetSubscriptions()
	if len(all) != 3 {
		t.Errorf("all subscriptions: %v", ids(all))
	}
	_, err := asPartner.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{ApplicationId: other.GetId()}))
	wantCode(t, "list another application's subscriptions", err, connect.CodeNotFound)
	_, err = e.as(otherKey).GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: created.GetId()}))
	wantCode(t, "get another application's subscription", err, connect.CodeNotFound)
	_, err = asPartner.DeleteSubscription(ctx, connect.NewRequest(&registryv1.DeleteSubscriptionRequest{Id: otherSub.GetId()}))
	wantCode(t, "delete another application's subscription", err, connect.CodeNotFound)

	must(asPartner.DeleteSubscription(ctx, connect.NewRequest(&registryv1.DeleteSubscriptionRequest{Id: created.GetId()}))).msg(t)
	_, err = asPartner.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: created.GetId()}))
	wantCode(t, "get a deleted subscription", err, connect.CodeNotFound, created.GetId())
	_, err = asPartner.DeleteSubscription(ctx, connect.NewRequest(&registryv1.DeleteSubscriptionRequest{Id: created.GetId()}))
	wantCode(t, "delete a deleted subscription", err, connect.CodeNotFound)
	own = must(asPartner.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))).msg(t).GetSubscriptions()
	if got, want := ids(own), []string{second.GetId()}; !slices.Equal(got, want) {
		t.Errorf("own subscriptions after the delete: %v, want %v", got, want)
	}

	// What a partner application may not subscribe to, and bad filters.
	for _, c := range []struct {
		name      string
		appID     string
		types     []string
		filter    string
		code      connect.Code
		fragments []string
	}{
		{"filter that does not parse", "", []string{"billing.invoice.paid"}, `event.type ==`, connect.CodeInvalidArgument, []string{"subscription.filter", "Syntax error"}},
		{"filter with an unknown variable", "", []string{"billing.invoice.paid"}, `amount > 10`, connect.CodeInvalidArgument, []string{"undeclared reference", "amount"}},
		{"filter that is not boolean", "", []string{"billing.invoice.paid"}, `size(event)`, connect.CodeInvalidArgument, []string{"boolean", "int"}},
		{"type without a subscribe grant", "", []string{"identity.user.created"}, "", connect.CodePermissionDenied, []string{"identity.user.created", "grant"}},
		{"pattern wider than the grant", "", []string{"*"}, "", connect.CodePermissionDenied, []string{`covering *`}},
		{"pattern beside the grant", "", []string{"identity.*"}, "", connect.CodePermissionDenied, []string{"identity.*"}},
		{"type not visible to the audience", "", []string{"billing.audit.logged"}, "", connect.CodeNotFound, []string{`event type "billing.audit.logged" does not exist`}},
		{"type not registered", "", []string{"billing.invoice.voided"}, "", connect.CodeNotFound, []string{`event type "billing.invoice.voided" does not exist`}},
		{"one refused type among allowed ones", "", []string{"billing.invoice.paid", "billing.audit.logged"}, "", connect.CodeNotFound, []string{"billing.audit.logged"}},
		{"another application", other.GetId(), []string{"billing.invoice.paid"}, "", connect.CodeNotFound, []string{"does not exist"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.revision(t)
			_, err := asPartner.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
				ApplicationId: c.appID, Types: c.types, Filter: c.filter,
				Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
			}}))
			wantCode(t, c.name, err, c.code, c.fragments...)
			if e.revision(t) != before {
				t.Errorf("a refused subscription wrote something")
			}
		})
	}
}

func TestVisibility(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Visibility: registryv1.Visibility_VISIBILITY_PARTNER})
	e.createType(t, &registryv1.EventType{Name: "billing.audit.logged"}) // unset: internal
	e.createType(t, &registryv1.EventType{Name: "identity.user.created", Visibility: registryv1.Visibility_VISIBILITY_PUBLIC})
	e.createType(t, &registryv1.EventType{Name: "ops.disk.full", Visibility: registryv1.Visibility_VISIBILITY_INTERNAL})
	for _, p := range []*registryv1.Product{
		{Name: "billing-all", EventTypes: []string{"billing.*"}},
		{Name: "identity-all", EventTypes: []string{"identity.*"}},
		{Name: "ops-all", EventTypes: []string{"ops.*"}},
	} {
		must(e.admin.CreateProduct(ctx, connect.NewRequest(&registryv1.CreateProductRequest{Product: p}))).msg(t)
	}

	for _, c := range []struct {
		audience registryv1.Audience
		types    string // visible types, in name order
		domains  string
		products string
	}{
		// The herald domain's types (registered at start) are internal.
		{registryv1.Audience_AUDIENCE_UNSPECIFIED, "billing.audit.logged,billing.invoice.paid,herald.endpoint.disabled,herald.endpoint.ping,herald.invoice.finalized,herald.quota.warning,identity.user.created,ops.disk.full", "billing,herald,identity,ops", "billing-all,identity-all,ops-all"},
		{registryv1.Audience_AUDIENCE_INTERNAL, "billing.audit.logged,billing.invoice.paid,herald.endpoint.disabled,herald.endpoint.ping,herald.invoice.finalized,herald.quota.warning,identity.user.created,ops.disk.full", "billing,herald,identity,ops", "billing-all,identity-all,ops-all"},
		{registryv1.Audience_AUDIENCE_PARTNER, "billing.invoice.paid,identity.user.created", "billing,identity", "billing-all,identity-all"},
		{registryv1.Audience_AUDIENCE_PUBLIC, "identity.user.created", "identity", "identity-all"},
	} {
		t.Run(c.audience.String(), func(t *testing.T) {
			_, key := e.createApp(t, &registryv1.Application{Name: "reader", Audience: c.audience})
			client := e.as(key)
			var names []string
			for _, et := range must(client.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))).msg(t).GetEventTypes() {
				names = append(names, et.GetName())
			}
			if got := strings.Join(names, ","); got != c.types {
				t.Errorf("types: %s, want %s", got, c.types)
			}
			names = nil
			for _, d := range must(client.ListDomains(ctx, connect.NewRequest(&registryv1.ListDomainsRequest{}))).msg(t).GetDomains() {
				names = append(names, d.GetName())
			}
			if got := strings.Join(names, ","); got != c.domains {
				t.Errorf("domains: %s, want %s", got, c.domains)
			}
			names = nil
			for _, p := range must(client.ListProducts(ctx, connect.NewRequest(&registryv1.ListProductsRequest{}))).msg(t).GetProducts() {
				names = append(names, p.GetName())
			}
			if got := strings.Join(names, ","); got != c.products {
				t.Errorf("products: %s, want %s", got, c.products)
			}
			// What is not listed cannot be read either: it does not exist
			// as far as the application knows.
			for _, name := range []string{"billing.audit.logged", "billing.invoice.paid", "identity.user.created", "ops.disk.full"} {
				visible := strings.Contains(","+c.types+",", ","+name+",")
				_, err := client.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: name}))
				_, verr := client.ListSchemaVersions(ctx, connect.NewRequest(&registryv1.ListSchemaVersionsRequest{EventType: name}))
				if visible && (err != nil || verr != nil) {
					t.Errorf("get %s: %v; versions: %v", name, err, verr)
				}
				if !visible {
					wantCode(t, "get "+name, err, connect.CodeNotFound)
					wantCode(t, "versions of "+name, verr, connect.CodeNotFound)
				}
			}
			_, err := client.GetDomain(ctx, connect.NewRequest(&registryv1.GetDomainRequest{Name: "ops"}))
			if strings.Contains(c.domains, "ops") != (err == nil) {
				t.Errorf("get domain ops: %v", err)
			}
			_, err = client.GetProduct(ctx, connect.NewRequest(&registryv1.GetProductRequest{Name: "ops-all"}))
			if strings.Contains(c.products, "ops-all") != (err == nil) {
				t.Errorf("get product ops-all: %v", err)
			}
		})
	}
}
