package safehttp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"
)

// Client timeouts.
const (
	// DefaultTimeout is the whole-request timeout of Client(0), the
	// webhook request timeout of the Standard Webhooks guidance.
	DefaultTimeout = 15 * time.Second
	// MaxTimeout bounds Client's timeout: a customer's server never holds
	// a request of ours longer.
	MaxTimeout = 5 * time.Minute
)

// minAttempt is the least time one address of several gets to connect.
const minAttempt = 2 * time.Second

// NewTransport returns the tuned base transport Client uses and Transport(nil)
// starts from: keep-alives, 64 idle connections per host, HTTP/2 for https,
// TLS 1.2 or later, bounded handshake and response-header size, no proxy.
// It is not safe by itself: pass it to Policy.Transport.
func NewTransport() *http.Transport {
	return &http.Transport{
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
	}
}

// Transport returns a clone of base (NewTransport() when nil) that can only
// reach what the policy allows. Its DialContext resolves the host once with
// p.Resolver, refuses the connection if ANY resolved address is refused
// (a *RefusedError wrapping ErrRefused, naming the host and the class,
// never the address), then dials the checked addresses itself, in the
// resolver's order, with no second lookup; a net.Dialer Control function
// refuses any socket to an address other than those. Proxies are disabled
// (a proxy would do the lookup), and base's Dial, DialTLS and DialTLSContext
// are dropped so that every connection, TLS included, goes through that
// DialContext. The https rule is not the transport's (it never sees the
// scheme of a dial): CheckURL and Client apply it.
//
// Entries of p.Allow that do not parse open nothing.
func (p Policy) Transport(base *http.Transport) *http.Transport {
	if base == nil {
		base = NewTransport()
	}
	t := base.Clone()
	t.Proxy = nil
	t.OnProxyConnectResponse = nil
	t.GetProxyConnectHeader = nil
	// Deprecated fields too: a base dialer must not bypass DialContext.
	t.Dial = nil
	t.DialTLS = nil
	t.DialTLSContext = nil
	d := &dialer{p: p, net: net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}}
	d.al, _ = p.compile() // invalid entries are skipped: they open nothing
	t.DialContext = d.DialContext
	return t
}

// Client returns an http.Client for customer URLs: ClientWith(nil, timeout).
func (p Policy) Client(timeout time.Duration) *http.Client { return p.ClientWith(nil, timeout) }

// ClientWith returns an http.Client for customer URLs over
// p.Transport(base) (base nil: NewTransport()), with the https rule checked
// on every request, redirects never followed (a 3xx is returned as it is,
// with its Location, and the target is never requested), and a whole-request
// timeout: DefaultTimeout when timeout <= 0, at most MaxTimeout. A test
// gives a base whose TLSClientConfig trusts its receivers' certificate.
func (p Policy) ClientWith(base *http.Transport, timeout time.Duration) *http.Client {
	switch {
	case timeout <= 0:
		timeout = DefaultTimeout
	case timeout > MaxTimeout:
		timeout = MaxTimeout
	}
	al, _ := p.compile()
	return &http.Client{
		Transport: &roundTripper{p: p, al: al, t: p.Transport(base)},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
		Timeout: timeout,
	}
}

// roundTripper applies the https rule and the URL checks that need the
// scheme before the transport dials.
type roundTripper struct {
	p  Policy
	al allowlist
	t  *http.Transport
}

func (rt *roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil {
		return nil, &RefusedError{Class: ClassMalformed, Detail: "the request has no URL"}
	}
	scheme, host, _, err := checkURL(req.URL)
	if err == nil && scheme == "http" && !rt.al.httpAllowed(&rt.p, host) {
		err = &RefusedError{Class: ClassHTTPSRequired, Host: host}
	}
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	return rt.t.RoundTrip(req)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// transport.
func (rt *roundTripper) CloseIdleConnections() { rt.t.CloseIdleConnections() }

type dialer struct {
	p   Policy
	al  allowlist
	net net.Dialer
}

// DialContext resolves, checks every address, and dials the checked ones.
func (d *dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var family string
	switch network {
	case "tcp":
		family = "ip"
	case "tcp4":
		family = "ip4"
	case "tcp6":
		family = "ip6"
	default:
		return nil, &RefusedError{Class: ClassMalformed, Detail: fmt.Sprintf("network %q is not supported", network)}
	}
	h, ps, err := net.SplitHostPort(address)
	if err != nil {
		return nil, &RefusedError{Class: ClassMalformed, Detail: "not a host and port"}
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return nil, &RefusedError{Class: ClassPort, Host: h, Detail: ps}
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(h); err == nil {
		if c := d.al.refusal(a); c != "" {
			return nil, &RefusedError{Class: c, Host: h}
		}
		addrs = []netip.Addr{a.Unmap()}
	} else {
		name, err := normalizeName(h)
		if err != nil {
			return nil, &RefusedError{Class: ClassMalformed, Detail: fmt.Sprintf("host %q: %v", h, err)}
		}
		if addrs, err = d.p.resolve(ctx, &d.al, family, name); err != nil {
			return nil, err
		}
	}
	return d.dialChecked(ctx, network, h, addrs, uint16(port))
}

// dialChecked dials the addresses in order until one connects, sharing the
// time left among them (as net.Dialer does for a name), and checks in the
// socket's Control function that the address connected to is one of them.
func (d *dialer) dialChecked(ctx context.Context, network, host string, addrs []netip.Addr, port uint16) (net.Conn, error) {
	nd := d.net
	nd.Control = control(host, addrs, port)
	var first error
	for i, a := range addrs {
		actx := ctx
		if dl, ok := ctx.Deadline(); ok && i < len(addrs)-1 {
			share := time.Until(dl) / time.Duration(len(addrs)-i)
			if share < minAttempt {
				share = minAttempt
			}
			var cancel context.CancelFunc
			actx, cancel = context.WithTimeout(ctx, share)
			defer cancel()
		}
		c, err := nd.DialContext(actx, network, netip.AddrPortFrom(a, port).String())
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	var re *RefusedError
	if errors.As(first, &re) {
		return nil, re
	}
	return nil, dialError(host, first)
}

// control is the second line of defence: a net.Dialer Control function that
// refuses a socket to any address other than the checked ones, whatever the
// code above it did.
func control(host string, addrs []netip.Addr, port uint16) func(network, address string, _ syscall.RawConn) error {
	return func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err == nil && ap.Port() == port {
			for _, a := range addrs {
				if ap.Addr().Unmap() == a {
					return nil
				}
			}
		}
		return &RefusedError{Class: ClassReserved, Host: host, Resolved: true}
	}
}
