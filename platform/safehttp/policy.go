// Package safehttp is the outbound HTTP client for URLs that customers give
// Herald (webhook endpoints, registry endpoint validation, bridges): it refuses
// loopback, private, link-local, metadata and other special-purpose addresses
// unless an allowlist opens them, resolves each host once, checks every
// address and dials the checked address, and never follows a redirect.
package safehttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/idna"
)

// Resolver resolves a host name to its addresses; network is "ip", "ip4" or
// "ip6". *net.Resolver satisfies it; tests give a resolver whose answers they
// choose.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Policy says which URLs and addresses may be called. The zero value is the
// strict default: https only, public addresses only, net.DefaultResolver.
type Policy struct {
	// Allow lists what is opened despite the defaults, each entry a CIDR
	// prefix ("127.0.0.0/8", "::1/128"), a single address ("10.1.2.3") or a
	// host name ("localhost", "*.internal.example": any name below
	// internal.example, not the name itself). An allowed address may be
	// dialled even if it is private or loopback; a host allowed by name may
	// resolve to any address. A host allowed by name, or an address literal
	// in an allowed prefix, may also use plain http. A name that resolves to
	// an allowed private address still needs https unless the name itself is
	// allowed. Zone-scoped addresses are never allowed. Entries that do not
	// parse (see ParsePolicy) open nothing.
	Allow []string
	// AllowHTTP permits http:// for every host. Addresses are checked all
	// the same.
	AllowHTTP bool
	// Resolver resolves host names; nil means net.DefaultResolver.
	Resolver Resolver
}

// allowlist is a parsed Policy.Allow.
type allowlist struct {
	prefixes []netip.Prefix
	names    map[string]bool // exact host names, lower case, no trailing dot
	suffixes []string        // ".internal.example" for "*.internal.example"
}

// ParsePolicy parses a comma-separated allowlist, the value of
// HERALD_WEBHOOK_ALLOW, into a Policy with that Allow (AllowHTTP false, the
// default resolver). Spaces around entries and empty entries are ignored. The
// error names every bad entry and why.
func ParsePolicy(allow string) (Policy, error) {
	var (
		p    Policy
		errs []error
	)
	for _, raw := range strings.Split(allow, ",") {
		e := strings.TrimSpace(raw)
		if e == "" {
			continue
		}
		if _, err := parseEntry(e); err != nil {
			errs = append(errs, err)
			continue
		}
		p.Allow = append(p.Allow, e)
	}
	if len(errs) > 0 {
		return Policy{}, fmt.Errorf("HERALD_WEBHOOK_ALLOW: %w", errors.Join(errs...))
	}
	return p, nil
}

// entry is one parsed allowlist entry: exactly one field is set.
type entry struct {
	prefix netip.Prefix
	name   string
	suffix string
}

func parseEntry(e string) (entry, error) {
	bad := func(why string) (entry, error) { return entry{}, fmt.Errorf("allowlist entry %q: %s", e, why) }
	if strings.Contains(e, "://") || strings.ContainsAny(e, "@?#") {
		return bad("want an address, a CIDR prefix or a host name, without scheme, path or port")
	}
	if strings.Contains(e, "%") {
		return bad("zone-scoped addresses cannot be allowed")
	}
	if strings.Contains(e, "/") {
		pfx, err := netip.ParsePrefix(e)
		if err != nil {
			return bad("not a CIDR prefix (want e.g. 127.0.0.0/8 or ::1/128)")
		}
		return entry{prefix: unmapPrefix(pfx.Masked())}, nil
	}
	if a, err := netip.ParseAddr(e); err == nil {
		a = a.Unmap()
		return entry{prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	if strings.Contains(e, ":") {
		return bad("not an address; a port cannot be given (the allowlist opens every port of an address)")
	}
	if e == "*" {
		return bad("a lone * would open every host; list the prefixes or names to open")
	}
	if rest, ok := strings.CutPrefix(e, "*."); ok {
		n, err := normalizeName(rest)
		if err != nil {
			return bad(err.Error())
		}
		return entry{suffix: "." + n}, nil
	}
	n, err := normalizeName(e)
	if err != nil {
		return bad(err.Error())
	}
	return entry{name: n}, nil
}

// unmapPrefix turns ::ffff:10.0.0.0/104 into 10.0.0.0/8: addresses are
// unmapped before they are compared, so a mapped prefix would match nothing.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

func (p Policy) compile() (allowlist, error) {
	al := allowlist{names: map[string]bool{}}
	var errs []error
	for _, e := range p.Allow {
		en, err := parseEntry(strings.TrimSpace(e))
		switch {
		case err != nil:
			errs = append(errs, err)
		case en.prefix.IsValid():
			al.prefixes = append(al.prefixes, en.prefix)
		case en.name != "":
			al.names[en.name] = true
		default:
			al.suffixes = append(al.suffixes, en.suffix)
		}
	}
	return al, errors.Join(errs...)
}

func (al *allowlist) addr(a netip.Addr) bool {
	if a.Zone() != "" {
		return false
	}
	a = a.Unmap()
	for _, p := range al.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// name reports whether the (normalized) host name is allowed.
func (al *allowlist) name(host string) bool {
	if al.names[host] {
		return true
	}
	for _, s := range al.suffixes {
		if strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}

// refusal is the class of a, or "" when a may be dialled.
func (al *allowlist) refusal(a netip.Addr) string {
	if al.addr(a) {
		return ""
	}
	return Classify(a)
}

// httpAllowed applies the https rule to a host (a literal or a normalized
// name) of the URL.
func (al *allowlist) httpAllowed(p *Policy, host string) bool {
	if p.AllowHTTP {
		return true
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return al.addr(a)
	}
	return al.name(host)
}

func (p Policy) resolver() Resolver {
	if p.Resolver == nil {
		return net.DefaultResolver
	}
	return p.Resolver
}

// CheckURL is the check at endpoint creation. It refuses (with an error
// wrapping ErrRefused, a *RefusedError) a URL that does not parse, whose
// scheme is not http or https, that uses http where the policy requires
// https, that carries a user name or password, that has no host or a port
// outside 1..65535, or whose host is, or resolves to, an address the policy
// does not open: a name is refused if ANY of its addresses is. The message
// says why in the customer's terms and never shows a resolved address.
//
// A name that does not resolve gives an error wrapping ErrResolve, not
// ErrRefused. An invalid Policy.Allow gives an error that wraps neither.
//
// Passing CheckURL does not make later calls safe by itself: a name may
// resolve elsewhere tomorrow, which is why Transport checks again at every
// dial.
func (p Policy) CheckURL(ctx context.Context, raw string) error {
	al, err := p.compile()
	if err != nil {
		return fmt.Errorf("safehttp: invalid allowlist: %w", err)
	}
	scheme, host, _, err := splitURL(raw)
	if err != nil {
		return err
	}
	if scheme == "http" && !al.httpAllowed(&p, host) {
		return &RefusedError{Class: ClassHTTPSRequired, Host: host}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if c := al.refusal(a); c != "" {
			return &RefusedError{Class: c, Host: host}
		}
		return nil
	}
	_, err = p.resolve(ctx, &al, "ip", host)
	return err
}

// splitURL parses and checks a URL up to its host and port: the host is an
// address literal (zone kept, brackets removed) or a normalized ASCII name.
func splitURL(raw string) (scheme, host string, port int, err error) {
	malformed := func(why string) (string, string, int, error) {
		return "", "", 0, &RefusedError{Class: ClassMalformed, Detail: why}
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return malformed("not a valid URL: " + err.Error())
	}
	return checkURL(u)
}

// checkURL is splitURL for a parsed URL.
func checkURL(u *url.URL) (scheme, host string, port int, err error) {
	malformed := func(why string) (string, string, int, error) {
		return "", "", 0, &RefusedError{Class: ClassMalformed, Detail: why}
	}
	switch u.Scheme {
	case "http", "https":
	case "":
		return malformed("the URL has no scheme; it must start with https://")
	default:
		return "", "", 0, &RefusedError{Class: ClassScheme, Detail: u.Scheme}
	}
	if u.Opaque != "" {
		return malformed("not a valid URL: want " + u.Scheme + "://host/path")
	}
	if u.User != nil {
		return "", "", 0, &RefusedError{Class: ClassUserinfo, Host: u.Hostname()}
	}
	h := u.Hostname()
	if h == "" {
		return malformed("the URL has no host")
	}
	switch ps := u.Port(); {
	case ps != "":
		n, err := strconv.Atoi(ps)
		if err != nil || n < 1 || n > 65535 {
			return "", "", 0, &RefusedError{Class: ClassPort, Host: h, Detail: ps}
		}
		port = n
	case strings.HasSuffix(u.Host, ":"):
		return "", "", 0, &RefusedError{Class: ClassPort, Host: h, Detail: ""}
	case u.Scheme == "http":
		port = 80
	default:
		port = 443
	}
	if strings.HasPrefix(u.Host, "[") {
		a, err := netip.ParseAddr(h)
		if err != nil || !a.Is6() {
			return malformed(fmt.Sprintf("host %q is not a valid IPv6 address", h))
		}
		if a.Zone() != "" {
			return "", "", 0, &RefusedError{Class: ClassZone, Host: h}
		}
		return u.Scheme, h, port, nil
	}
	if a, err := netip.ParseAddr(h); err == nil {
		if !a.Is4() {
			return malformed(fmt.Sprintf("host %q: an IPv6 address must be in brackets", h))
		}
		return u.Scheme, h, port, nil
	}
	n, err := normalizeName(h)
	if err != nil {
		return malformed(fmt.Sprintf("host %q: %v", h, err))
	}
	return u.Scheme, n, port, nil
}

// normalizeName returns a host name in the form the transport dials (ASCII,
// IDNA-encoded, lower case, no trailing dot), or why it is not a host name.
// Numeric forms that some resolvers read as IPv4 ("127.1", "0x7f000001",
// "2130706433") are not host names.
func normalizeName(h string) (string, error) {
	h = strings.TrimSuffix(h, ".")
	if h == "" {
		return "", errors.New("empty host name")
	}
	// Like net/http, which converts only a non-ASCII host: idna's STD3
	// rules would refuse the underscores some real host names carry.
	a := h
	if !ascii(h) {
		var err error
		if a, err = idna.Lookup.ToASCII(h); err != nil {
			return "", errors.New("not a valid host name")
		}
	}
	a = strings.ToLower(a)
	if len(a) > 253 {
		return "", errors.New("host name longer than 253 characters")
	}
	labels := strings.Split(a, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "", errors.New("not a valid host name (empty or over-long label)")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", errors.New("not a valid host name (a label starts or ends with a hyphen)")
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("not a valid host name (character %q)", c)
			}
		}
	}
	last := labels[len(labels)-1]
	if numeric(last) {
		return "", errors.New("not a valid host name (a numeric address must be written as a.b.c.d)")
	}
	return a, nil
}

// numeric reports a label that inet_aton would read as a number: decimal,
// octal or 0x hex. A real top-level domain is never one.
func numeric(l string) bool {
	if s, ok := strings.CutPrefix(l, "0x"); ok {
		l = s
		if l == "" {
			return true
		}
		for _, c := range []byte(l) {
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
		return true
	}
	for _, c := range []byte(l) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// resolve looks a normalized host name up once and checks every address.
// A name allowed by the allowlist may resolve anywhere (except to a
// zone-scoped address). It returns the addresses, unmapped, in the
// resolver's order.
func (p Policy) resolve(ctx context.Context, al *allowlist, network, host string) ([]netip.Addr, error) {
	addrs, err := p.resolver().LookupNetIP(ctx, network, host)
	if err != nil || len(addrs) == 0 {
		return nil, resolveError(host, err)
	}
	byName := al.name(host)
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		c := ""
		switch {
		case a.Zone() != "":
			c = ClassZone
		case !byName:
			c = al.refusal(a)
		}
		if c != "" {
			return nil, &RefusedError{Class: c, Host: host, Resolved: true}
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
