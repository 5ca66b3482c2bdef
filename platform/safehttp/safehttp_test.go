package safehttp_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/safehttp"
)

// resolver is the test resolver: answers the tests set, changeable at any
// time, and a count of lookups per name. An unknown name is "no such host"
// from a resolver at an internal address, which no error may repeat.
type resolver struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	calls   map[string]int
}

const internalDNS = "10.9.8.7:53"

func newResolver() *resolver {
	return &resolver{answers: map[string][]netip.Addr{}, calls: map[string]int{}}
}

func (r *resolver) set(host string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[host] = nil
	for _, a := range addrs {
		r.answers[host] = append(r.answers[host], netip.MustParseAddr(a))
	}
}

func (r *resolver) lookups(host string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[host]
}

func (r *resolver) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[host]++
	as, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, Server: internalDNS, IsNotFound: true}
	}
	var out []netip.Addr
	for _, a := range as {
		if network == "ip" || network == "ip4" && a.Unmap().Is4() || network == "ip6" && !a.Unmap().Is4() {
			out = append(out, a)
		}
	}
	return out, nil
}

// server is a webhook receiver on a real socket at addr ("127.0.0.1:0" or
// "127.0.0.2:0") that counts its requests and answers with h.
func server(t *testing.T, addr string, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	var hits atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if h == nil {
			io.WriteString(w, "ok")
			return
		}
		h(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &hits
}

func refusal(t *testing.T, err error) *safehttp.RefusedError {
	t.Helper()
	if !errors.Is(err, safehttp.ErrRefused) {
		t.Fatalf("error %v: want one wrapping ErrRefused", err)
	}
	var re *safehttp.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("error %v: want a *RefusedError", err)
	}
	return re
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatalf("request %s: %v", u, err)
	}
	resp, err := c.Do(req)
	if err == nil {
		t.Cleanup(func() { resp.Body.Close() })
	}
	return resp, err
}

// classes lists an address of every class, refused by default.
var classes = []struct {
	addr, class string
}{
	{"0.0.0.0", safehttp.ClassUnspecified},
	{"0.1.2.3", safehttp.ClassUnspecified},
	{"127.0.0.1", safehttp.ClassLoopback},
	{"127.255.255.254", safehttp.ClassLoopback},
	{"10.0.0.1", safehttp.ClassPrivate},
	{"172.16.0.1", safehttp.ClassPrivate},
	{"172.31.255.255", safehttp.ClassPrivate},
	{"192.168.1.1", safehttp.ClassPrivate},
	{"169.254.1.1", safehttp.ClassLinkLocal},
	{"169.254.169.254", safehttp.ClassMetadata},
	{"169.254.170.2", safehttp.ClassMetadata},
	{"100.100.100.200", safehttp.ClassMetadata},
	{"192.0.0.192", safehttp.ClassMetadata},
	{"168.63.129.16", safehttp.ClassMetadata},
	{"fd00:ec2::254", safehttp.ClassMetadata},
	{"100.64.0.1", safehttp.ClassSharedNAT},
	{"100.127.255.254", safehttp.ClassSharedNAT},
	{"224.0.0.1", safehttp.ClassMulticast},
	{"239.255.255.250", safehttp.ClassMulticast},
	{"255.255.255.255", safehttp.ClassBroadcast},
	{"192.0.2.1", safehttp.ClassDocumentation},
	{"198.51.100.1", safehttp.ClassDocumentation},
	{"203.0.113.1", safehttp.ClassDocumentation},
	{"198.18.0.1", safehttp.ClassBenchmarking},
	{"198.19.255.254", safehttp.ClassBenchmarking},
	{"240.0.0.1", safehttp.ClassReserved},
	{"192.0.0.8", safehttp.ClassReserved},
	{"192.88.99.1", safehttp.ClassReserved},
	{"::", safehttp.ClassUnspecified},
	{"::1", safehttp.ClassLoopback},
	{"fc00::1", safehttp.ClassPrivate},
	{"fd12:3456::1", safehttp.ClassPrivate},
	{"fec0::1", safehttp.ClassPrivate},
	{"fe80::1", safehttp.ClassLinkLocal},
	{"ff02::1", safehttp.ClassMulticast},
	{"ff0e::1", safehttp.ClassMulticast},
	{"2001:db8::1", safehttp.ClassDocumentation},
	{"3fff::1", safehttp.ClassDocumentation},
	{"2001:2::1", safehttp.ClassBenchmarking},
	{"100::1", safehttp.ClassReserved},
	{"::ffff:10.0.0.1", safehttp.ClassPrivate},
	{"::ffff:127.0.0.1", safehttp.ClassLoopback},
	{"::ffff:169.254.169.254", safehttp.ClassMetadata},
	{"64:ff9b::a00:1", safehttp.ClassPrivate},            // NAT64 of 10.0.0.1
	{"64:ff9b::7f00:1", safehttp.ClassLoopback},          // NAT64 of 127.0.0.1
	{"64:ff9b::a9fe:a9fe", safehttp.ClassMetadata},       // NAT64 of 169.254.169.254
	{"64:ff9b:1::808:808", safehttp.ClassTransition},     // local-use NAT64
	{"2002:a00:1::1", safehttp.ClassPrivate},             // 6to4 of 10.0.0.1
	{"2002:7f00:1::", safehttp.ClassLoopback},            // 6to4 of 127.0.0.1
	{"2002:808:808::1", safehttp.ClassTransition},        // 6to4 of a public address
	{"2001:0:a00:1::1", safehttp.ClassPrivate},           // Teredo, server 10.0.0.1
	{"2001:0:808:808::f5ff:fffe", safehttp.ClassPrivate}, // Teredo, client 10.0.0.1 (inverted)
	{"2001:0:808:808::f7f7:f7f7", safehttp.ClassTransition},
	{"::a00:1", safehttp.ClassPrivate}, // IPv4-compatible 10.0.0.1
	{"::808:808", safehttp.ClassTransition},
	{"fe80::1%eth0", safehttp.ClassZone},
	{"2606:4700:4700::1111%eth0", safehttp.ClassZone},
}

// public lists addresses that are allowed by default.
var public = []string{
	"8.8.8.8", "1.1.1.1", "93.184.215.14", "100.128.0.1", "172.32.0.1", "2606:4700:4700::1111",
	"2a00:1450:4001::200e", "::ffff:8.8.8.8", "64:ff9b::808:808",
}

func TestClassify(t *testing.T) {
	for _, c := range classes {
		if got := safehttp.Classify(netip.MustParseAddr(c.addr)); got != c.class {
			t.Errorf("Classify(%s) = %q, want %q", c.addr, got, c.class)
		}
	}
	for _, a := range public {
		if got := safehttp.Classify(netip.MustParseAddr(a)); got != "" {
			t.Errorf("Classify(%s) = %q, want public", a, got)
		}
	}
	if got := safehttp.Classify(netip.Addr{}); got == "" {
		t.Errorf("Classify(invalid) = public, want a refusal")
	}
}

// literalURL is an https URL with a as its host.
func literalURL(a string) string {
	addr := netip.MustParseAddr(a)
	if addr.Is4() {
		return "https://" + a + "/hook"
	}
	return "https://[" + strings.ReplaceAll(a, "%", "%25") + "]/hook"
}

// TestRefusedByLiteral: every class is refused in a URL, at creation and at
// dial time.
func TestRefusedByLiteral(t *testing.T) {
	var p safehttp.Policy
	c := p.Client(0)
	for _, tc := range classes {
		t.Run(tc.addr, func(t *testing.T) {
			u := literalURL(tc.addr)
			re := refusal(t, p.CheckURL(t.Context(), u))
			if re.Class != tc.class || re.Resolved {
				t.Errorf("CheckURL(%s): class %q resolved %v, want %q by literal", u, re.Class, re.Resolved, tc.class)
			}
			if !strings.Contains(re.Error(), " is ") {
				t.Errorf("CheckURL(%s): %q, want it to say the host is %s", u, re.Error(), tc.class)
			}
			_, err := get(t, c, u)
			if re := refusal(t, err); re.Class != tc.class {
				t.Errorf("GET %s: class %q, want %q", u, re.Class, tc.class)
			}
		})
	}
}

// TestRefusedByName: a name resolving to any class is refused, at creation
// and at dial time, and no error shows the address.
func TestRefusedByName(t *testing.T) {
	r := newResolver()
	p := safehttp.Policy{Resolver: r}
	c := p.Client(0)
	for i, tc := range classes {
		t.Run(tc.addr, func(t *testing.T) {
			host := fmt.Sprintf("h%d.customer.example", i)
			r.set(host, tc.addr)
			u := "https://" + host + "/hook"
			err := p.CheckURL(t.Context(), u)
			re := refusal(t, err)
			if re.Class != tc.class || !re.Resolved || re.Host != host {
				t.Errorf("CheckURL(%s): %+v, want class %q resolved from %s", u, re, tc.class, host)
			}
			noAddress(t, err, tc.addr)
			if want := "resolves to"; !strings.Contains(err.Error(), want) {
				t.Errorf("CheckURL(%s): %q, want %q", u, err, want)
			}
			_, err = get(t, c, u)
			if re := refusal(t, err); re.Class != tc.class {
				t.Errorf("GET %s: class %q, want %q", u, re.Class, tc.class)
			}
			noAddress(t, err, tc.addr)
		})
	}
}

// noAddress fails if the error text shows the address in any usual form.
func noAddress(t *testing.T, err error, addr string) {
	t.Helper()
	a := netip.MustParseAddr(addr)
	for _, form := range []string{a.String(), a.Unmap().String(), a.WithZone("").String()} {
		if form != "" && strings.Contains(err.Error(), form) {
			t.Errorf("error %q shows the resolved address %s", err, form)
		}
	}
}

// TestAnyAddressRefuses: one refused address among public ones refuses the
// name, whatever its position.
func TestAnyAddressRefuses(t *testing.T) {
	r := newResolver()
	p := safehttp.Policy{Resolver: r}
	r.set("mixed.example", "93.184.215.14", "2606:4700:4700::1111", "10.0.0.7")
	re := refusal(t, p.CheckURL(t.Context(), "https://mixed.example/"))
	if re.Class != safehttp.ClassPrivate {
		t.Errorf("class %q, want private", re.Class)
	}
	r.set("ok.example", "93.184.215.14", "2606:4700:4700::1111")
	if err := p.CheckURL(t.Context(), "https://ok.example/"); err != nil {
		t.Errorf("CheckURL of a public name: %v", err)
	}
	for _, a := range public {
		if err := p.CheckURL(t.Context(), literalURL(a)); err != nil {
			t.Errorf("CheckURL(%s): %v", literalURL(a), err)
		}
	}
}

// TestRebinding: a name public at creation and loopback later fails at dial
// time with the reason, and the loopback server is never reached.
func TestRebinding(t *testing.T) {
	srv, hits := server(t, "127.0.0.1:0", nil)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	r := newResolver()
	p := safehttp.Policy{Resolver: r, AllowHTTP: true}
	u := "http://rebind.example:" + port + "/hook"

	r.set("rebind.example", "93.184.215.14")
	if err := p.CheckURL(t.Context(), u); err != nil {
		t.Fatalf("CheckURL while public: %v", err)
	}
	r.set("rebind.example", "127.0.0.1")
	_, err := get(t, p.Client(0), u)
	if re := refusal(t, err); re.Class != safehttp.ClassLoopback || !re.Resolved {
		t.Errorf("GET after rebinding: %+v, want loopback by name", re)
	}
	noAddress(t, err, "127.0.0.1")
	if n := hits.Load(); n != 0 {
		t.Errorf("the loopback server got %d requests, want 0", n)
	}
	// The same request with 127.0.0.1 allowed reaches it: the refusal above
	// was the policy, not a broken test server.
	p.Allow = []string{"127.0.0.1"}
	if resp, err := get(t, p.Client(0), u); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET with 127.0.0.1 allowed: %v", err)
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("the server got %d requests, want 1", n)
	}
}

// TestOneLookupPerDial: the transport resolves with the policy's resolver,
// once per connection, and dials what it checked.
func TestOneLookupPerDial(t *testing.T) {
	srv, hits := server(t, "127.0.0.1:0", nil)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	r := newResolver()
	r.set("svc.herald.test", "127.0.0.1")
	p := safehttp.Policy{Resolver: r, Allow: []string{"127.0.0.0/8"}, AllowHTTP: true}
	c := p.Client(0)
	u := "http://svc.herald.test:" + port + "/"
	for range 3 {
		resp, err := get(t, c, u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := r.lookups("svc.herald.test"); n != 1 {
		t.Errorf("%d lookups for 3 requests on a kept-alive connection, want 1", n)
	}
	c.CloseIdleConnections()
	if _, err := get(t, c, u); err != nil {
		t.Fatalf("GET after closing idle connections: %v", err)
	}
	if n := r.lookups("svc.herald.test"); n != 2 {
		t.Errorf("%d lookups after a new connection, want 2", n)
	}
	if n := hits.Load(); n != 4 {
		t.Errorf("server got %d requests, want 4", n)
	}
}

// TestAllowlistOpens: 127.0.0.1 is refused until allowed; allowed, plain
// http to it works too.
func TestAllowlistOpens(t *testing.T) {
	srv, hits := server(t, "127.0.0.1:0", nil)
	_, err := get(t, safehttp.Policy{AllowHTTP: true}.Client(0), srv.URL)
	if re := refusal(t, err); re.Class != safehttp.ClassLoopback {
		t.Errorf("GET without allowlist: class %q, want loopback", re.Class)
	}
	for _, allow := range []string{"127.0.0.1", "127.0.0.0/8", "::ffff:127.0.0.0/104"} {
		p, err := safehttp.ParsePolicy(allow)
		if err != nil {
			t.Fatalf("ParsePolicy(%q): %v", allow, err)
		}
		if err := p.CheckURL(t.Context(), srv.URL); err != nil {
			t.Errorf("allow %q: CheckURL(%s): %v", allow, srv.URL, err)
		}
		resp, err := get(t, p.Client(0), srv.URL)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("allow %q: GET %s: %v", allow, srv.URL, err)
		}
	}
	if n := hits.Load(); n != 3 {
		t.Errorf("server got %d requests, want 3", n)
	}
	// An allowed 127.0.0.1 does not open the rest of loopback.
	p, _ := safehttp.ParsePolicy("127.0.0.1")
	if re := refusal(t, p.CheckURL(t.Context(), "http://127.0.0.2/")); re.Class != safehttp.ClassHTTPSRequired {
		t.Errorf("http to 127.0.0.2: class %q, want https-required", re.Class)
	}
	if re := refusal(t, p.CheckURL(t.Context(), "https://127.0.0.2/")); re.Class != safehttp.ClassLoopback {
		t.Errorf("https to 127.0.0.2: class %q, want loopback", re.Class)
	}
}

// TestAllowByName: a name allowed may resolve anywhere and use http; a
// wildcard opens names below it, not itself nor look-alikes.
func TestAllowByName(t *testing.T) {
	srv, _ := server(t, "127.0.0.1:0", nil)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	r := newResolver()
	for _, h := range []string{"localhost", "a.internal.example", "internal.example", "evilinternal.example", "b.a.internal.example"} {
		r.set(h, "127.0.0.1", "::1")
	}
	p, err := safehttp.ParsePolicy("LocalHost., *.internal.example")
	if err != nil {
		t.Fatal(err)
	}
	p.Resolver = r
	for _, h := range []string{"localhost", "a.internal.example", "b.a.internal.example", "LOCALHOST."} {
		u := "http://" + h + ":" + port + "/"
		if err := p.CheckURL(t.Context(), u); err != nil {
			t.Errorf("CheckURL(%s): %v", u, err)
		}
		if resp, err := get(t, p.Client(0), u); err != nil || resp.StatusCode != 200 {
			t.Errorf("GET %s: %v", u, err)
		}
	}
	for _, h := range []string{"internal.example", "evilinternal.example"} {
		if re := refusal(t, p.CheckURL(t.Context(), "http://"+h+"/")); re.Class != safehttp.ClassHTTPSRequired {
			t.Errorf("http://%s: class %q, want https-required", h, re.Class)
		}
		if re := refusal(t, p.CheckURL(t.Context(), "https://"+h+"/")); re.Class != safehttp.ClassLoopback {
			t.Errorf("https://%s: class %q, want loopback", h, re.Class)
		}
	}
	// Allowed by name, but a zone-scoped answer is still refused.
	r.set("localhost", "fe80::1%lo")
	if re := refusal(t, p.CheckURL(t.Context(), "http://localhost/")); re.Class != safehttp.ClassZone {
		t.Errorf("zone-scoped answer: class %q, want zone", re.Class)
	}
}

// TestRedirectsNotFollowed: a 3xx comes back as it is; the target is never
// requested, whether it is refused or not.
func TestRedirectsNotFollowed(t *testing.T) {
	other, otherHits := server(t, "127.0.0.2:0", nil)
	for _, tc := range []struct {
		name, allow, location string
	}{
		{"to metadata", "127.0.0.1", "http://169.254.169.254/latest/meta-data/"},
		{"to a server not allowed", "127.0.0.1", other.URL + "/x"},
		{"to an allowed server", "127.0.0.0/8", other.URL + "/x"},
		{"to a name", "127.0.0.1", "http://metadata.google.internal/computeMetadata/v1/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := server(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, tc.location, http.StatusFound)
			})
			p, err := safehttp.ParsePolicy(tc.allow)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := get(t, p.Client(0), srv.URL+"/hook")
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != tc.location {
				t.Errorf("got %d Location %q, want 302 %q as it was", resp.StatusCode, resp.Header.Get("Location"), tc.location)
			}
			if n := otherHits.Load(); n != 0 {
				t.Errorf("redirect target got %d requests, want 0", n)
			}
		})
	}
}

// TestRedirectFollowedStillChecked: even a caller that turns redirect
// following back on cannot reach a refused target: the dial refuses it.
func TestRedirectFollowedStillChecked(t *testing.T) {
	other, otherHits := server(t, "127.0.0.2:0", nil)
	for _, location := range []string{"http://169.254.169.254/latest/meta-data/", other.URL + "/x"} {
		srv, _ := server(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, location, http.StatusFound)
		})
		p := safehttp.Policy{Allow: []string{"127.0.0.1"}, AllowHTTP: true}
		c := p.Client(0)
		c.CheckRedirect = nil
		_, err := get(t, c, srv.URL)
		re := refusal(t, err)
		if re.Class != safehttp.ClassMetadata && re.Class != safehttp.ClassLoopback {
			t.Errorf("redirect to %s: class %q", location, re.Class)
		}
	}
	if n := otherHits.Load(); n != 0 {
		t.Errorf("redirect target got %d requests, want 0", n)
	}
}

// TestHTTPS: the transport keeps TLS and HTTP/2 working through its dialer,
// and https to a refused address is refused before any handshake.
func TestHTTPS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	base := safehttp.NewTransport()
	base.TLSClientConfig.RootCAs = pool

	p := safehttp.Policy{Allow: []string{"127.0.0.1"}}
	if err := p.CheckURL(t.Context(), srv.URL); err != nil {
		t.Fatalf("CheckURL(%s): %v", srv.URL, err)
	}
	c := &http.Client{Transport: p.Transport(base)}
	resp, err := get(t, c, srv.URL)
	if err != nil {
		t.Fatalf("GET %s: %v", srv.URL, err)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("protocol %s, want HTTP/2", resp.Proto)
	}
	// ClientWith: the same, with the https rule and no redirects.
	resp, err = get(t, p.ClientWith(base, 0), srv.URL)
	if err != nil || resp.ProtoMajor != 2 {
		t.Fatalf("ClientWith: GET %s: %v", srv.URL, err)
	}
	c = &http.Client{Transport: safehttp.Policy{}.Transport(base)}
	_, err = get(t, c, srv.URL)
	if re := refusal(t, err); re.Class != safehttp.ClassLoopback {
		t.Errorf("GET without allowlist: class %q, want loopback", re.Class)
	}
}

// TestHTTPSRequired: plain http is refused unless the policy opens it, at
// creation and per request.
func TestHTTPSRequired(t *testing.T) {
	r := newResolver()
	r.set("hooks.example.com", "93.184.215.14")
	p := safehttp.Policy{Resolver: r}
	for _, u := range []string{"http://hooks.example.com/", "http://8.8.8.8/", "HTTP://hooks.example.com:8080/x"} {
		if re := refusal(t, p.CheckURL(t.Context(), u)); re.Class != safehttp.ClassHTTPSRequired {
			t.Errorf("CheckURL(%s): class %q, want https-required", u, re.Class)
		}
		if !strings.Contains(p.CheckURL(t.Context(), u).Error(), "use https") {
			t.Errorf("CheckURL(%s): the message does not say to use https", u)
		}
		_, err := get(t, p.Client(0), u)
		if re := refusal(t, err); re.Class != safehttp.ClassHTTPSRequired {
			t.Errorf("GET %s: class %q, want https-required", u, re.Class)
		}
	}
	if r.lookups("hooks.example.com") != 0 {
		t.Errorf("a refused http URL was resolved")
	}
	p.AllowHTTP = true
	if err := p.CheckURL(t.Context(), "http://hooks.example.com/"); err != nil {
		t.Errorf("AllowHTTP: %v", err)
	}
}

// TestHostNames: names are checked in the form the transport dials.
func TestHostNames(t *testing.T) {
	r := newResolver()
	r.set("my_host.example.com", "93.184.215.14")
	r.set("xn--bcher-kva.example", "93.184.215.14")
	r.set("evil.example", "10.0.0.1")
	r.set("xn--evl-sma.example", "10.0.0.1") // "evíl.example"
	p := safehttp.Policy{Resolver: r}
	for _, u := range []string{"https://my_host.example.com/", "https://b\u00fccher.example/", "https://B\u00dcCHER.example./", "https://xn--bcher-kva.example/"} {
		if err := p.CheckURL(t.Context(), u); err != nil {
			t.Errorf("CheckURL(%s): %v", u, err)
		}
	}
	for _, u := range []string{"https://EVIL.example./", "https://ev\u00edl.example/"} {
		if re := refusal(t, p.CheckURL(t.Context(), u)); re.Class != safehttp.ClassPrivate {
			t.Errorf("CheckURL(%s): class %q, want private", u, re.Class)
		}
		_, err := get(t, p.Client(0), u)
		if re := refusal(t, err); re.Class != safehttp.ClassPrivate {
			t.Errorf("GET %s: class %q, want private", u, re.Class)
		}
	}
}

// TestMalformed: URLs refused before any lookup, each with its class.
func TestMalformed(t *testing.T) {
	r := newResolver()
	p := safehttp.Policy{Resolver: r, AllowHTTP: true}
	for _, tc := range []struct{ url, class string }{
		{"", safehttp.ClassMalformed},
		{"://x", safehttp.ClassMalformed},
		{"example.com/hook", safehttp.ClassMalformed},
		{"//example.com/hook", safehttp.ClassMalformed},
		{"https://", safehttp.ClassMalformed},
		{"https:///hook", safehttp.ClassMalformed},
		{"https:example.com", safehttp.ClassMalformed},
		{"https://exa mple.com/", safehttp.ClassMalformed},
		{"https://[::1", safehttp.ClassMalformed},
		{"https://[1.2.3.4]/", safehttp.ClassMalformed},
		{"https://%zz/", safehttp.ClassMalformed},
		{"https://a..b/", safehttp.ClassMalformed},
		{"https://-/", safehttp.ClassMalformed},
		{"https://a-.example/", safehttp.ClassMalformed},
		{"https://-a.example/", safehttp.ClassMalformed},
		{"https://127.1/", safehttp.ClassMalformed},
		{"https://0x7f000001/", safehttp.ClassMalformed},
		{"https://2130706433/", safehttp.ClassMalformed},
		{"https://0177.0.0.1/", safehttp.ClassMalformed},
		{"https://a.b.c.0x10/", safehttp.ClassMalformed},
		{"https://" + strings.Repeat("a", 64) + ".com/", safehttp.ClassMalformed},
		{"ftp://example.com/", safehttp.ClassScheme},
		{"javascript:alert(1)", safehttp.ClassScheme},
		{"file:///etc/passwd", safehttp.ClassScheme},
		{"gopher://127.0.0.1:70/_FLUSHALL", safehttp.ClassScheme},
		{"https://user:pw@example.com/", safehttp.ClassUserinfo},
		{"https://user@example.com/", safehttp.ClassUserinfo},
		{"https://example.com:0/", safehttp.ClassPort},
		{"https://example.com:65536/", safehttp.ClassPort},
		{"https://example.com:99999999999999999999/", safehttp.ClassPort},
		{"https://example.com:/", safehttp.ClassPort},
		{"https://[fe80::1%25eth0]/", safehttp.ClassZone},
	} {
		err := p.CheckURL(t.Context(), tc.url)
		if err == nil {
			t.Errorf("CheckURL(%q) = nil, want %s", tc.url, tc.class)
			continue
		}
		if re := refusal(t, err); re.Class != tc.class {
			t.Errorf("CheckURL(%q): class %q (%v), want %q", tc.url, re.Class, err, tc.class)
		}
	}
	if len(r.calls) != 0 {
		t.Errorf("malformed URLs were resolved: %v", r.calls)
	}
}

// TestResolveErrors: a name that does not resolve is not a refusal, and the
// message never shows the resolver's address.
func TestResolveErrors(t *testing.T) {
	r := newResolver()
	r.set("empty.example")
	p := safehttp.Policy{Resolver: r}
	for _, h := range []string{"nx.example", "empty.example"} {
		err := p.CheckURL(t.Context(), "https://"+h+"/")
		if !errors.Is(err, safehttp.ErrResolve) || errors.Is(err, safehttp.ErrRefused) {
			t.Fatalf("CheckURL(%s): %v, want ErrResolve and not ErrRefused", h, err)
		}
		if strings.Contains(err.Error(), "10.9.8.7") {
			t.Errorf("CheckURL(%s): %q shows the resolver's address", h, err)
		}
		if !strings.Contains(err.Error(), h) {
			t.Errorf("CheckURL(%s): %q does not name the host", h, err)
		}
	}
	err := p.CheckURL(t.Context(), "https://nx.example/")
	var dns *net.DNSError
	if !errors.As(err, &dns) || !dns.IsNotFound {
		t.Errorf("CheckURL: %v, want the *net.DNSError reachable", err)
	}
	_, err = get(t, p.Client(0), "https://nx.example/")
	if !errors.Is(err, safehttp.ErrResolve) || strings.Contains(err.Error(), "10.9.8.7") {
		t.Errorf("GET: %v, want ErrResolve without the resolver's address", err)
	}
}

// TestDialErrors: a failed connection names the host, not the address.
func TestDialErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	r := newResolver()
	r.set("down.example", "127.0.0.1")
	p := safehttp.Policy{Resolver: r, Allow: []string{"127.0.0.1"}, AllowHTTP: true}
	_, err = get(t, p.Client(0), "http://down.example:"+port+"/")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("GET a closed port: %v, want ECONNREFUSED", err)
	}
	if errors.Is(err, safehttp.ErrRefused) {
		t.Errorf("a closed port is not a policy refusal: %v", err)
	}
	if strings.Contains(err.Error(), "127.0.0.1") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("message %q: want the reason without the address", err)
	}
}

// TestInvalidPolicy: CheckURL reports a bad Allow entry; Transport skips it.
func TestInvalidPolicy(t *testing.T) {
	srv, _ := server(t, "127.0.0.1:0", nil)
	p := safehttp.Policy{Allow: []string{"127.0.0.1:8080", "127.0.0.1/32"}, AllowHTTP: true}
	err := p.CheckURL(t.Context(), srv.URL)
	if err == nil || errors.Is(err, safehttp.ErrRefused) || !strings.Contains(err.Error(), "127.0.0.1:8080") {
		t.Errorf("CheckURL with a bad entry: %v, want an allowlist error naming it", err)
	}
	if resp, err := get(t, p.Client(0), srv.URL); err != nil || resp.StatusCode != 200 {
		t.Errorf("GET with the good entry: %v", err)
	}
}

// TestTransportClone: proxies and base dialers cannot bypass the checks.
func TestTransportClone(t *testing.T) {
	srv, hits := server(t, "127.0.0.1:0", nil)
	proxy, proxyHits := server(t, "127.0.0.1:0", nil)
	proxyURL, _ := url.Parse(proxy.URL)
	var bypass atomic.Int64
	base := safehttp.NewTransport()
	base.Proxy = http.ProxyURL(proxyURL)
	base.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		bypass.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	tr := safehttp.Policy{Allow: []string{"127.0.0.1"}}.Transport(base)
	if tr.Proxy != nil || tr.DialTLSContext != nil || tr.DialContext == nil {
		t.Fatalf("Transport kept the proxy or the base TLS dialer")
	}
	if base.Proxy == nil || base.DialTLSContext == nil {
		t.Fatalf("Transport changed its base")
	}
	resp, err := get(t, &http.Client{Transport: tr}, srv.URL)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET: %v", err)
	}
	if hits.Load() != 1 || proxyHits.Load() != 0 || bypass.Load() != 0 {
		t.Errorf("server %d, proxy %d, base dialer %d requests; want 1, 0, 0", hits.Load(), proxyHits.Load(), bypass.Load())
	}
	if tr := (safehttp.Policy{}).Transport(nil); tr.MaxIdleConnsPerHost != 64 || !tr.ForceAttemptHTTP2 || tr.Proxy != nil {
		t.Errorf("Transport(nil) is not the tuned default")
	}
}

// TestClientTimeout: always bounded.
func TestClientTimeout(t *testing.T) {
	var p safehttp.Policy
	for in, want := range map[time.Duration]time.Duration{
		0: safehttp.DefaultTimeout, -time.Second: safehttp.DefaultTimeout,
		2 * safehttp.MaxTimeout: safehttp.MaxTimeout, 3 * time.Second: 3 * time.Second,
	} {
		if got := p.Client(in).Timeout; got != want {
			t.Errorf("Client(%v).Timeout = %v, want %v", in, got, want)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	p, err := safehttp.ParsePolicy(" 127.0.0.0/8, ::1/128,localhost,, *.internal.example ,10.1.2.3,::ffff:10.0.0.0/104, ")
	if err != nil {
		t.Fatalf("ParsePolicy: %v", err)
	}
	if len(p.Allow) != 6 {
		t.Errorf("Allow = %q, want 6 entries", p.Allow)
	}
	if p, err := safehttp.ParsePolicy(""); err != nil || len(p.Allow) != 0 {
		t.Errorf("ParsePolicy(\"\") = %v, %v", p, err)
	}
	for _, bad := range []string{
		"http://localhost", "localhost:3000", "127.0.0.1:80", "[::1]", "10.0.0.0/33", "10.0.0/8",
		"fe80::1%eth0", "*", "*.", "exa mple", "127.1", "a..b", "user@host", "*.127.1", "host/path",
	} {
		_, err := safehttp.ParsePolicy("localhost," + bad)
		if err == nil {
			t.Errorf("ParsePolicy(%q) = nil error", bad)
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) || !strings.Contains(err.Error(), "HERALD_WEBHOOK_ALLOW") {
			t.Errorf("ParsePolicy(%q): %q does not name the entry and the variable", bad, err)
		}
	}
	_, err = safehttp.ParsePolicy("a:1, ok, b/99")
	if err == nil || !strings.Contains(err.Error(), `"a:1"`) || !strings.Contains(err.Error(), `"b/99"`) {
		t.Errorf("two bad entries: %v, want both named", err)
	}
}

// anyResolver answers every name with the same addresses.
type anyResolver struct{ addrs []netip.Addr }

func (r *anyResolver) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	return r.addrs, nil
}
