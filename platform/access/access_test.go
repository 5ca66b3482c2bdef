package access

import (
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestCovers(t *testing.T) {
	cases := []struct {
		grant, requested string
		want             bool
	}{
		{"*", "billing.invoice.paid", true},
		{"*", "*", true},
		{"billing.*", "billing.invoice.paid", true},
		{"billing.*", "billing.invoice.*", true},
		{"billing.*", "billing.*", true},
		{"billing.*", "*", false},
		{"billing.invoice.*", "billing.*", false},
		{"billing.*", "billingx.a", false},
		{"billing.invoice.paid", "billing.invoice.paid", true},
		{"billing.invoice.paid", "billing.invoice.*", false},
		{"billing.invoice.paid", "billing.invoice.created", false},
	}
	for _, c := range cases {
		if got := Covers(c.grant, c.requested); got != c.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c.grant, c.requested, got, c.want)
		}
	}
}

func TestAllowedAndVisible(t *testing.T) {
	grants := []*registryv1.Grant{
		{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "billing.*"},
		{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "identity.user.created"},
	}
	if !Allowed(grants, registryv1.GrantAction_GRANT_ACTION_PUBLISH, "billing.invoice.paid") {
		t.Error("publish grant not applied")
	}
	if Allowed(grants, registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, "billing.invoice.paid") {
		t.Error("a publish grant allowed subscribing")
	}
	if Allowed(nil, registryv1.GrantAction_GRANT_ACTION_PUBLISH, "a.b") {
		t.Error("no grants allowed something")
	}
	pub, part, internal := registryv1.Visibility_VISIBILITY_PUBLIC, registryv1.Visibility_VISIBILITY_PARTNER, registryv1.Visibility_VISIBILITY_UNSPECIFIED
	for _, c := range []struct {
		a    registryv1.Audience
		v    registryv1.Visibility
		want bool
	}{
		{registryv1.Audience_AUDIENCE_PUBLIC, pub, true},
		{registryv1.Audience_AUDIENCE_PUBLIC, part, false},
		{registryv1.Audience_AUDIENCE_PUBLIC, internal, false},
		{registryv1.Audience_AUDIENCE_PARTNER, part, true},
		{registryv1.Audience_AUDIENCE_PARTNER, internal, false},
		{registryv1.Audience_AUDIENCE_UNSPECIFIED, internal, true},
	} {
		if got := Visible(c.a, c.v); got != c.want {
			t.Errorf("Visible(%v, %v) = %v", c.a, c.v, got)
		}
	}
}

func FuzzCovers(f *testing.F) {
	f.Add("billing.*", "billing.invoice.*")
	f.Fuzz(func(t *testing.T, g, r string) { _ = Covers(g, r) })
}
