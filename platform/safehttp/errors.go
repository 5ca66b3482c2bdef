package safehttp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
)

// ErrRefused is wrapped by every refusal of a URL or of an address, at
// endpoint creation (CheckURL) and at dial time (Transport, Client). Test for
// it with errors.Is; errors.As with *RefusedError gives the class.
var ErrRefused = errors.New("refused")

// ErrResolve is wrapped by the errors of a host name that cannot be resolved
// (no such host, no address, the resolver timed out or failed). It is not a
// refusal: the name may resolve later, so deliveries retry it.
var ErrResolve = errors.New("cannot resolve host")

// RefusedError is a refusal with its reason. Its message is meant for the
// customer who gave the URL: it names the host they gave and the class of the
// problem, never an address the host resolved to.
type RefusedError struct {
	// Class is what is wrong: an address class (ClassLoopback,
	// ClassPrivate, ClassMetadata, ...) or a URL class (ClassScheme,
	// ClassHTTPSRequired, ClassUserinfo, ClassPort, ClassMalformed).
	Class string
	// Host is the host as the customer wrote it (a name or a literal
	// address), or "" when the URL has none.
	Host string
	// Resolved is true when Host is a name and one of its addresses is
	// refused; false when Host is itself a refused address literal.
	Resolved bool
	// Detail completes the message of a URL class (the scheme, the port or
	// the parse error); empty for address classes.
	Detail string
}

// Error says why, e.g. `refused: host "hooks.example.com" resolves to a
// private address`.
func (e *RefusedError) Error() string {
	if p, ok := phrases[e.Class]; ok {
		verb := "is"
		if e.Resolved {
			verb = "resolves to"
		}
		return fmt.Sprintf("refused: host %q %s %s", e.Host, verb, p)
	}
	switch e.Class {
	case ClassScheme:
		return fmt.Sprintf("refused: scheme %q is not allowed; use https", e.Detail)
	case ClassHTTPSRequired:
		return fmt.Sprintf("refused: plain http is not allowed for host %q; use https", e.Host)
	case ClassUserinfo:
		return "refused: the URL must not contain a user name or password; send credentials in a header instead"
	case ClassPort:
		return fmt.Sprintf("refused: port %q is not a number from 1 to 65535", e.Detail)
	}
	if e.Detail != "" {
		return "refused: " + e.Detail
	}
	return "refused: " + e.Class
}

// Unwrap makes every RefusedError match ErrRefused.
func (e *RefusedError) Unwrap() error { return ErrRefused }

// ResolveError is a host name that did not resolve. Its message names the
// host and a short reason and never the resolver's own address (which a
// *net.DNSError's message carries); errors.As still finds the *net.DNSError.
type ResolveError struct {
	// Host is the name that did not resolve, in its dialled (ASCII) form.
	Host string
	// Reason is "no such host", "no address", "timed out" or "temporary
	// failure".
	Reason string
	err    error
}

// Error says which host and why.
func (e *ResolveError) Error() string {
	return fmt.Sprintf("cannot resolve host %q: %s", e.Host, e.Reason)
}

// Unwrap gives ErrResolve and the resolver's error.
func (e *ResolveError) Unwrap() []error {
	if e.err == nil {
		return []error{ErrResolve}
	}
	return []error{ErrResolve, e.err}
}

// Timeout reports a resolver timeout, so net.Error-style checks keep working.
func (e *ResolveError) Timeout() bool { return e.Reason == "timed out" }

func resolveError(host string, err error) error {
	if err == nil {
		return &ResolveError{Host: host, Reason: "no address"}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &ResolveError{Host: host, Reason: "timed out", err: err}
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		switch {
		case dns.IsNotFound:
			return &ResolveError{Host: host, Reason: "no such host", err: err}
		case dns.IsTimeout:
			return &ResolveError{Host: host, Reason: "timed out", err: err}
		}
	}
	return &ResolveError{Host: host, Reason: "temporary failure", err: err}
}

// DialError is a failed connection to a host whose addresses were allowed.
// Its message names the host and a short reason, never the address dialled;
// errors.Is and errors.As still reach the underlying error (syscall.ECONNREFUSED,
// *net.OpError).
type DialError struct {
	// Host is the host of the URL (a name or the literal it gave).
	Host string
	// Reason is "connection refused", "connection reset", "timed out",
	// "network unreachable", "host unreachable", "canceled" or "connection
	// failed".
	Reason string
	err    error
}

// Error says which host and why.
func (e *DialError) Error() string {
	return fmt.Sprintf("connect to host %q: %s", e.Host, e.Reason)
}

// Unwrap gives the underlying error.
func (e *DialError) Unwrap() error { return e.err }

// Timeout reports a connect timeout (net/http and url.Error consult it).
func (e *DialError) Timeout() bool { return e.Reason == "timed out" }

func dialError(host string, err error) error {
	reason := "connection failed"
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		reason = "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		reason = "timed out"
	case errors.Is(err, syscall.ECONNREFUSED):
		reason = "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		reason = "connection reset"
	case errors.Is(err, syscall.ENETUNREACH):
		reason = "network unreachable"
	case errors.Is(err, syscall.EHOSTUNREACH):
		reason = "host unreachable"
	}
	return &DialError{Host: host, Reason: reason, err: err}
}
