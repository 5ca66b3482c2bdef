package eventtype

import (
	"slices"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	long := "a." + strings.Repeat("b", MaxNameLength-2)
	cases := []struct {
		name string
		ok   bool
	}{
		{"billing.invoice.paid", true},
		{"a.b", true},
		{"identity.user.created", true},
		{"x1.y_2.z-3", true},
		{"a.b.c.d.e.f", true},
		{long, true}, // exactly MaxNameLength
		{long + "c", false},
		{"", false},
		{"billing", false}, // one segment
		{"billing.", false},
		{".billing", false},
		{"billing..paid", false},
		{"Billing.invoice", false},
		{"billing.Invoice", false},
		{"1billing.invoice", false},
		{"billing.1nvoice", false},
		{"_billing.invoice", false},
		{"-billing.invoice", false},
		{"billing.in voice", false},
		{"billing.invoice*", false},
		{"billing.*", false},
		{"*", false},
		{"billing/invoice.paid", false},
		{"billing:invoice.paid", false},
		{"billing.invoicé", false},
		{"billing.invoice\n", false},
		{"billing.{x}", false},
	}
	for _, c := range cases {
		err := ValidateName(c.name)
		if (err == nil) != c.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

func TestValidatePattern(t *testing.T) {
	cases := []struct {
		pattern string
		ok      bool
	}{
		{"*", true},
		{"billing.*", true},
		{"billing.invoice.*", true},
		{"billing.invoice.paid", true},
		{"a.b", true},
		{"", false},
		{"billing", false}, // an exact name needs two segments
		{".*", false},
		{"*.*", false},
		{"**", false},
		{"billing*", false},
		{"billing.*.paid", false},
		{"*.paid", false},
		{"billing.inv*", false},
		{"billing.**", false},
		{"billing..*", false},
		{"Billing.*", false},
		{"billing.*.", false},
		{"billing. *", false},
		{" *", false},
	}
	for _, c := range cases {
		err := ValidatePattern(c.pattern)
		if (err == nil) != c.ok {
			t.Errorf("ValidatePattern(%q) = %v, want ok=%v", c.pattern, err, c.ok)
		}
	}
}

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern, name string
		want          bool
	}{
		{"billing.*", "billing.invoice.paid", true},
		{"billing.*", "billing.refund", true},
		{"billing.*", "billing", false},
		{"billing.*", "billing.", false},
		{"billing.*", "billingx.a", false},
		{"billing.*", "identity.user.created", false},
		{"billing.*", "x.billing.invoice", false},
		{"billing.invoice.*", "billing.invoice.paid", true},
		{"billing.invoice.*", "billing.invoice.paid.late", true},
		{"billing.invoice.*", "billing.invoices.paid", false},
		{"billing.invoice.*", "billing.invoice", false},
		{"*", "billing.invoice.paid", true},
		{"*", "a.b", true},
		{"*", "", true},
		{"billing.invoice.paid", "billing.invoice.paid", true},
		{"billing.invoice.paid", "billing.invoice.paid.x", false},
		{"billing.invoice.paid", "billing.invoice", false},
		{"billing.invoice.paid", "Billing.invoice.paid", false},
		{"", "", true},
		{"", "a.b", false},
	}
	for _, c := range cases {
		if got := Match(c.pattern, c.name); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}

func TestMatchAny(t *testing.T) {
	patterns := []string{"billing.*", "identity.user.created"}
	for name, want := range map[string]bool{
		"billing.invoice.paid":  true,
		"identity.user.created": true,
		"identity.user.deleted": false,
		"shipping.order.sent":   false,
	} {
		if got := MatchAny(patterns, name); got != want {
			t.Errorf("MatchAny(%v, %q) = %v, want %v", patterns, name, got, want)
		}
	}
	if MatchAny(nil, "billing.invoice.paid") {
		t.Error("MatchAny(nil) matched")
	}
}

func TestParsePatterns(t *testing.T) {
	cases := []struct {
		in      []string
		want    []string
		wantErr bool
	}{
		{in: []string{"billing.*"}, want: []string{"billing.*"}},
		{in: []string{"billing.*,identity.user.created"}, want: []string{"billing.*", "identity.user.created"}},
		{in: []string{" billing.* , identity.user.created ", "*"}, want: []string{"billing.*", "identity.user.created", "*"}},
		{in: []string{"a.b,,c.d,"}, want: []string{"a.b", "c.d"}},
		{in: []string{"", "a.b", " "}, want: []string{"a.b"}},
		{in: []string{"a.b", "a.b"}, want: []string{"a.b", "a.b"}},
		{in: nil, wantErr: true},
		{in: []string{}, wantErr: true},
		{in: []string{""}, wantErr: true},
		{in: []string{" , ,"}, wantErr: true},
		{in: []string{"billing.*,billing"}, wantErr: true},
		{in: []string{"a.b", "*.paid"}, wantErr: true},
		{in: []string{"Billing.*"}, wantErr: true},
	}
	for _, c := range cases {
		got, err := ParsePatterns(c.in)
		if c.wantErr {
			if err == nil {
				t.Errorf("ParsePatterns(%q) = %q, want an error", c.in, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParsePatterns(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"billing.invoice.paid", "a.b", "", "billing", "Billing.x", "a..b", "a.b-c_d.e1", "*", "billing.*", strings.Repeat("a.", 101)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if err := ValidateName(name); err != nil {
			return
		}
		if len(name) > MaxNameLength || strings.Count(name, ".") < 1 || strings.ContainsAny(name, "* \t\n{}") {
			t.Fatalf("ValidateName accepted %q", name)
		}
		// Every valid name is a valid pattern matching exactly itself.
		if err := ValidatePattern(name); err != nil {
			t.Fatalf("valid name %q is not a valid pattern: %v", name, err)
		}
		if !Match(name, name) || !Match("*", name) {
			t.Fatalf("%q does not match itself or *", name)
		}
		// Every proper prefix of segments, followed by .*, matches it and is valid.
		segs := strings.Split(name, ".")
		for i := 1; i < len(segs); i++ {
			p := strings.Join(segs[:i], ".") + ".*"
			if err := ValidatePattern(p); err != nil {
				t.Fatalf("pattern %q for %q: %v", p, name, err)
			}
			if !Match(p, name) {
				t.Fatalf("Match(%q, %q) = false", p, name)
			}
		}
		if p := name + ".*"; Match(p, name) {
			t.Fatalf("Match(%q, %q) = true", p, name)
		}
	})
}

func FuzzMatch(f *testing.F) {
	for _, c := range [][2]string{
		{"billing.*", "billing.invoice.paid"}, {"billing.*", "billing"}, {"billing.*", "billingx.a"},
		{"*", "a.b"}, {"a.b", "a.b"}, {"", ""}, {"*", ""}, {"**", "x"}, {"a*", "a"}, {"billing.invoice.paid", "billing.invoice.paid"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		got := Match(pattern, name) // must not panic
		if MatchAny([]string{pattern}, name) != got {
			t.Fatalf("MatchAny and Match disagree on (%q, %q)", pattern, name)
		}
		if pattern == "*" && !got {
			t.Fatalf("* does not match %q", name)
		}
		if ValidatePattern(pattern) != nil {
			return
		}
		if !strings.Contains(pattern, "*") {
			if got != (pattern == name) {
				t.Fatalf("Match(%q, %q) = %v for an exact pattern", pattern, name, got)
			}
			return
		}
		if prefix, ok := strings.CutSuffix(pattern, ".*"); ok {
			want := strings.HasPrefix(name, prefix+".") && len(name) > len(prefix)+1
			if got != want {
				t.Fatalf("Match(%q, %q) = %v, want %v", pattern, name, got, want)
			}
			if got && ValidateName(name) == nil && !strings.HasPrefix(name, prefix+".") {
				t.Fatalf("Match(%q, %q) crosses a segment boundary", pattern, name)
			}
		}
	})
}
