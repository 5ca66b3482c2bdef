package catalogview

import (
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func channelNames(t *testing.T, f Filter) []string {
	t.Helper()
	d, err := AsyncAPI(sampleCatalog(), f, "http://127.0.0.1:7700")
	if err != nil {
		t.Fatalf("%+v: %v", f, err)
	}
	var out []string
	for k := range d.Channels {
		out = append(out, k)
	}
	slices.Sort(out)
	// The operations and messages follow the channels.
	for k := range d.Components.Messages {
		if _, ok := d.Channels[k]; !ok {
			t.Errorf("message %s without a channel", k)
		}
	}
	for k, op := range d.Operations {
		name := strings.TrimPrefix(op.Channel.Ref, "#/channels/")
		if _, ok := d.Channels[name]; !ok {
			t.Errorf("operation %s on missing channel %s", k, name)
		}
	}
	return out
}

func TestFilters(t *testing.T) {
	for _, c := range []struct {
		name   string
		filter Filter
		want   []string
	}{
		{"none", Filter{}, []string{"billing.invoice.created", "billing.invoice.paid", "billing.refund.issued", "identity.user.created", "orders.order.placed"}},
		{"domain", Filter{Domain: "billing"}, []string{"billing.invoice.created", "billing.invoice.paid", "billing.refund.issued"}},
		{"unregistered domain with types", Filter{Domain: "orders"}, []string{"orders.order.placed"}},
		{"registered domain without types", Filter{Domain: "shipping"}, nil},
		{"product by pattern", Filter{Product: "payments-pro"}, []string{"billing.invoice.created", "billing.invoice.paid", "billing.refund.issued"}},
		{"product by name", Filter{Product: "identity-basic"}, []string{"identity.user.created"}},
		{"product star", Filter{Product: "everything"}, []string{"billing.invoice.created", "billing.invoice.paid", "billing.refund.issued", "identity.user.created", "orders.order.placed"}},
		{"audience public", Filter{Audience: registryv1.Audience_AUDIENCE_PUBLIC}, []string{"billing.invoice.paid", "identity.user.created"}},
		{"audience partner", Filter{Audience: registryv1.Audience_AUDIENCE_PARTNER}, []string{"billing.invoice.created", "billing.invoice.paid", "identity.user.created"}},
		{"audience internal", Filter{Audience: registryv1.Audience_AUDIENCE_INTERNAL}, []string{"billing.invoice.created", "billing.invoice.paid", "billing.refund.issued", "identity.user.created", "orders.order.placed"}},
		{"domain and audience", Filter{Domain: "billing", Audience: registryv1.Audience_AUDIENCE_PUBLIC}, []string{"billing.invoice.paid"}},
		{"product and audience", Filter{Product: "everything", Audience: registryv1.Audience_AUDIENCE_PARTNER}, []string{"billing.invoice.created", "billing.invoice.paid", "identity.user.created"}},
		{"domain and product disjoint", Filter{Domain: "identity", Product: "payments-pro"}, nil},
		// Partner audience, subscribes to billing.* and orders.*, publishes identity.*.
		{"application", Filter{Application: "app_partner"}, []string{"billing.invoice.created", "billing.invoice.paid", "identity.user.created"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := channelNames(t, c.filter); !slices.Equal(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestApplicationFilterOperationsFollowGrants(t *testing.T) {
	d, err := AsyncAPI(sampleCatalog(), Filter{Application: "app_partner"}, "")
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	for k := range d.Operations {
		ops = append(ops, k)
	}
	slices.Sort(ops)
	want := []string{"billing.invoice.created.receive", "billing.invoice.paid.receive", "identity.user.created.send"}
	if !slices.Equal(ops, want) {
		t.Errorf("operations = %v, want %v", ops, want)
	}
}

func TestFilterDomainsAndProductsOfTheView(t *testing.T) {
	s, err := selectTypes(sampleCatalog(), Filter{Audience: registryv1.Audience_AUDIENCE_PUBLIC})
	if err != nil {
		t.Fatal(err)
	}
	var domains, products []string
	for _, d := range s.domains {
		domains = append(domains, d.d.GetName())
	}
	for _, p := range s.products {
		products = append(products, p.p.GetName())
	}
	// Domains and products with nothing visible are not shown to the public.
	if !slices.Equal(domains, []string{"billing", "identity"}) {
		t.Errorf("domains = %v", domains)
	}
	if !slices.Equal(products, []string{"everything", "identity-basic", "payments-pro"}) {
		t.Errorf("products = %v", products)
	}
	s, err = selectTypes(sampleCatalog(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	domains = nil
	for _, d := range s.domains {
		domains = append(domains, d.d.GetName())
	}
	if !slices.Equal(domains, []string{"billing", "identity", "orders", "shipping"}) {
		t.Errorf("unfiltered domains = %v", domains)
	}
}

func TestFilterNotFound(t *testing.T) {
	for _, f := range []Filter{{Domain: "nope"}, {Product: "nope"}, {Application: "nope"}} {
		_, err := AsyncAPI(sampleCatalog(), f, "")
		var nf *NotFoundError
		if !errors.As(err, &nf) {
			t.Errorf("%+v: err = %v, want NotFoundError", f, err)
		}
		if _, err := Page(sampleCatalog(), f); !errors.As(err, &nf) {
			t.Errorf("page %+v: err = %v, want NotFoundError", f, err)
		}
	}
}

func TestParseFilter(t *testing.T) {
	good := []struct {
		query string
		want  Filter
	}{
		{"", Filter{}},
		{"domain=billing", Filter{Domain: "billing"}},
		{"domain=&product=&audience=", Filter{}},
		{"product=payments-pro&audience=PUBLIC", Filter{Product: "payments-pro", Audience: registryv1.Audience_AUDIENCE_PUBLIC}},
		{"audience=partner", Filter{Audience: registryv1.Audience_AUDIENCE_PARTNER}},
		{"audience=internal&application=app_1", Filter{Audience: registryv1.Audience_AUDIENCE_INTERNAL, Application: "app_1"}},
	}
	for _, c := range good {
		q, _ := url.ParseQuery(c.query)
		got, err := ParseFilter(q)
		if err != nil || got != c.want {
			t.Errorf("%q: %+v, %v; want %+v", c.query, got, err, c.want)
		}
		if back, _ := ParseFilter(got.Query()); back != got {
			t.Errorf("%q: Query round trip %+v", c.query, back)
		}
	}
	bad := map[string]string{
		"audience=everyone":         "must be public, partner or internal",
		"domain=Billing":            "not a domain name",
		"domain=bil%20ling":         "not a domain name",
		"domain=billing.invoice":    "not a domain name",
		"domain=a&domain=b":         "more than once",
		"domian=billing":            "unknown parameter",
		"product=" + "%01x":         "not a product name",
		"product=my_prod":           "not a product name",
		"product=" + longName(101):  "longer than 100",
		"application=" + "%7Fapp_1": "control characters",
	}
	for query, want := range bad {
		q, _ := url.ParseQuery(query)
		_, err := ParseFilter(q)
		var bf *BadFilterError
		if !errors.As(err, &bf) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want BadFilterError with %q", query, err, want)
		}
	}
}

func longName(n int) string { return strings.Repeat("p", n) }

// TestNarrowAudienceDoesNotRevealTheRest: for a partner or public
// consumer, domains and products with no type it may see do not exist.
func TestNarrowAudienceDoesNotRevealTheRest(t *testing.T) {
	c := sampleCatalog()
	c.Products = append(c.Products, &registryv1.Product{Name: "ops-internal", EventTypes: []string{"orders.*", "billing.refund.issued"}})
	public := registryv1.Audience_AUDIENCE_PUBLIC
	for _, f := range []Filter{
		{Domain: "orders", Audience: public},   // only an internal type
		{Domain: "shipping", Audience: public}, // registered, no types
		{Product: "ops-internal", Audience: public},
		{Product: "ops-internal", Audience: registryv1.Audience_AUDIENCE_PARTNER},
		{Domain: "orders", Application: "app_partner"}, // a partner app, though granted orders.*
	} {
		var nf *NotFoundError
		if _, err := AsyncAPI(c, f, ""); !errors.As(err, &nf) {
			t.Errorf("%+v: %v, want not found", f, err)
		}
	}
	for _, f := range []Filter{
		{Domain: "shipping"}, {Domain: "orders", Audience: registryv1.Audience_AUDIENCE_INTERNAL},
		{Product: "ops-internal"}, {Product: "everything", Audience: public},
	} {
		if _, err := AsyncAPI(c, f, ""); err != nil {
			t.Errorf("%+v: %v", f, err)
		}
	}
	page, err := Page(c, Filter{Audience: public})
	if err != nil {
		t.Fatal(err)
	}
	for _, hidden := range []string{"orders", "shipping", "ops-internal", "billing.refund.issued", "billing.invoice.created"} {
		if strings.Contains(string(page), hidden) {
			t.Errorf("public page mentions %q", hidden)
		}
	}
}
