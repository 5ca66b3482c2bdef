package safehttp_test

import (
	"errors"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/heraldmesh/herald/platform/safehttp"
)

func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{
		"", "127.0.0.0/8,::1/128", "localhost, *.internal.example", "10.1.2.3", "::ffff:10.0.0.0/104",
		"http://x", "x:1", "*", "*.", "fe80::1%eth0", "127.1", "a..b", ",,", "\u00e9xample.com", "xn--",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := safehttp.ParsePolicy(s)
		if err != nil {
			if !strings.Contains(err.Error(), "HERALD_WEBHOOK_ALLOW") {
				t.Errorf("ParsePolicy(%q): %q does not name the variable", s, err)
			}
			return
		}
		// What parsed parses again to the same entries, and CheckURL
		// accepts the policy (no "invalid allowlist").
		q, err := safehttp.ParsePolicy(strings.Join(p.Allow, ","))
		if err != nil || !slices.Equal(p.Allow, q.Allow) {
			t.Errorf("ParsePolicy(%q) = %q, which reparses to %q, %v", s, p.Allow, q.Allow, err)
		}
		p.Resolver = newResolver()
		if err := p.CheckURL(t.Context(), "https://8.8.8.8/"); err != nil && !errors.Is(err, safehttp.ErrRefused) {
			t.Errorf("policy %q: CheckURL: %v", p.Allow, err)
		}
	})
}

// FuzzCheckURL: every name resolves to one public and one private address,
// so a name never passes, and no error may show either address. A URL that
// passes is https to a public literal.
func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{
		"https://example.com/hook", "https://8.8.8.8/", "https://[2606:4700:4700::1111]:8443/x",
		"http://127.0.0.1/", "https://[::ffff:10.0.0.1]/", "https://[fe80::1%25eth0]/", "https://user@x/",
		"https://x:0/", "https://127.1/", "ftp://x/", "https://\u00e9xample.com/", "https://EXAMPLE.com./",
		"https://[64:ff9b::a00:1]/", "https://%31%32%37.0.0.1/", "https://0x7f.0.0.1/",
	} {
		f.Add(s)
	}
	r := &anyResolver{addrs: []netip.Addr{netip.MustParseAddr("93.184.215.14"), netip.MustParseAddr("10.11.12.13")}}
	p := safehttp.Policy{Resolver: r}
	f.Fuzz(func(t *testing.T, raw string) {
		err := p.CheckURL(t.Context(), raw)
		if err == nil {
			u, perr := url.Parse(raw)
			if perr != nil || u.Scheme != "https" {
				t.Fatalf("CheckURL(%q) passed: not an https URL", raw)
			}
			a, perr := netip.ParseAddr(u.Hostname())
			if perr != nil || safehttp.Classify(a) != "" {
				t.Fatalf("CheckURL(%q) passed: host %q is not a public literal", raw, u.Hostname())
			}
			return
		}
		if !errors.Is(err, safehttp.ErrRefused) && !errors.Is(err, safehttp.ErrResolve) {
			t.Fatalf("CheckURL(%q): %v is neither a refusal nor a resolve error", raw, err)
		}
		for _, a := range r.addrs {
			if strings.Contains(err.Error(), a.String()) && !strings.Contains(raw, a.String()) {
				t.Fatalf("CheckURL(%q): %q shows a resolved address", raw, err)
			}
		}
	})
}
