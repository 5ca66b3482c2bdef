package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/secretbox"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Webhooks is what the handler needs to manage webhook endpoints.
type Webhooks struct {
	// Box seals signing secrets at rest; nil (no HERALD_SECRET_KEY) makes
	// webhook endpoints impossible to create or rotate, with an error that
	// tells the operator so.
	Box *secretbox.Box
	// Policy checks endpoint URLs and makes the validation requests.
	Policy safehttp.Policy
	// PublicURL is the edge's public base URL, for jwks_url.
	PublicURL string
	// Origin is the WebHook-Request-Origin of the abuse-protection
	// handshake.
	Origin string
	// MinDisableAfter is the shortest disable_after an endpoint may ask
	// for; 0 is the contract's one minute. Tests lower it to see an
	// endpoint disabled in seconds.
	MinDisableAfter time.Duration
}

// WithWebhooks sets what webhook endpoints need, and returns h.
func (h *Handler) WithWebhooks(w Webhooks) *Handler {
	w.PublicURL = strings.TrimSuffix(w.PublicURL, "/")
	h.webhooks = w
	return h
}

// Bounds and defaults of a webhook endpoint's settings (see WebhookChannel
// in registry.proto).
const (
	defaultMaxConcurrency = 10
	maxMaxConcurrency     = 100
	maxWebhookHeaders     = 20
	maxHeaderName         = 256
	maxHeaderValue        = 4096
	maxRetrySchedule      = 50
	// minRetryDelay is below the contract's documented 1s so that tests
	// (and `herald dev`) can run short schedules; production schedules
	// should keep to seconds.
	minRetryDelay       = 10 * time.Millisecond
	maxRetryDelay       = 24 * time.Hour
	defaultTimeout      = 15 * time.Second
	minTimeout          = time.Second
	maxTimeout          = 60 * time.Second
	defaultDisableAfter = 5 * 24 * time.Hour
	minDisableAfter     = time.Minute
	maxDisableAfter     = 30 * 24 * time.Hour
)

// defaultRetrySchedule is the schedule of an endpoint that names none:
// eight attempts over about 28 hours.
var defaultRetrySchedule = []time.Duration{
	5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour,
}

// hopByHop are the headers of one connection (RFC 9110 section 7.6.1),
// which an endpoint's extra headers may not set.
var hopByHop = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true, "proxy-authenticate": true,
	"proxy-authorization": true, "te": true, "trailer": true, "transfer-encoding": true, "upgrade": true,
}

// webhookSettings checks the settings a client gives an endpoint and
// returns them with every default filled in, so that the edge reads
// concrete values. Output-only fields (secrets, jwks_url, disable_time,
// disabled_reason) are not copied: the caller sets them. The URL is only
// checked for form here; checkEndpointURL applies the outbound policy.
func (w Webhooks) webhookSettings(in *registryv1.WebhookChannel) (*registryv1.WebhookChannel, error) {
	out := &registryv1.WebhookChannel{Url: in.GetUrl(), Disabled: in.GetDisabled()}
	if err := webhookURLForm(in.GetUrl()); err != nil {
		return nil, err
	}
	if err := validEnum("subscription.webhook.ordering", in.GetOrdering()); err != nil {
		return nil, err
	}
	out.Ordering = in.GetOrdering()
	if err := validEnum("subscription.webhook.signing", in.GetSigning()); err != nil {
		return nil, err
	}
	out.Signing = in.GetSigning()
	if err := validEnum("subscription.webhook.content_mode", in.GetContentMode()); err != nil {
		return nil, err
	}
	out.ContentMode = in.GetContentMode()
	out.JsonData = in.GetJsonData()

	switch n := in.GetMaxConcurrency(); {
	case n < 0 || n > maxMaxConcurrency:
		return nil, invalid("subscription.webhook.max_concurrency is %d; it must be between 1 and %d (0 means %d)", n, maxMaxConcurrency, defaultMaxConcurrency)
	case n == 0:
		out.MaxConcurrency = defaultMaxConcurrency
	default:
		out.MaxConcurrency = n
	}
	if r := in.GetRateLimit(); math.IsNaN(r) || math.IsInf(r, 0) || r < 0 {
		return nil, invalid("subscription.webhook.rate_limit is %v; give deliveries per second, 0 for no limit", r)
	}
	out.RateLimit = in.GetRateLimit()

	headers, err := webhookHeaders(in.GetHeaders())
	if err != nil {
		return nil, err
	}
	out.Headers = headers

	if len(in.GetRetrySchedule()) > maxRetrySchedule {
		return nil, invalid("subscription.webhook.retry_schedule has %d entries, more than the %d allowed", len(in.GetRetrySchedule()), maxRetrySchedule)
	}
	for i, d := range in.GetRetrySchedule() {
		if _, err := bounded(fmt.Sprintf("subscription.webhook.retry_schedule[%d]", i), d, 0, minRetryDelay, maxRetryDelay); err != nil {
			return nil, err
		}
		out.RetrySchedule = append(out.RetrySchedule, durationpb.New(d.AsDuration()))
	}
	if len(out.RetrySchedule) == 0 {
		for _, d := range defaultRetrySchedule {
			out.RetrySchedule = append(out.RetrySchedule, durationpb.New(d))
		}
	}
	if out.Timeout, err = bounded("subscription.webhook.timeout", in.GetTimeout(), defaultTimeout, minTimeout, maxTimeout); err != nil {
		return nil, err
	}
	if out.DisableAfter, err = bounded("subscription.webhook.disable_after", in.GetDisableAfter(), defaultDisableAfter, cmp.Or(w.MinDisableAfter, minDisableAfter), maxDisableAfter); err != nil {
		return nil, err
	}
	return out, nil
}

// bounded checks a duration against [lo, hi]; unset (nil) or zero is def
// when def is not zero, else refused.
func bounded(field string, d *durationpb.Duration, def, lo, hi time.Duration) (*durationpb.Duration, error) {
	if d == nil || (d.GetSeconds() == 0 && d.GetNanos() == 0) {
		if def != 0 {
			return durationpb.New(def), nil
		}
		return nil, invalid("%s is zero; it must be between %s and %s", field, lo, hi)
	}
	if err := d.CheckValid(); err != nil {
		return nil, invalid("%s: %v", field, err)
	}
	if t := d.AsDuration(); t < lo || t > hi {
		return nil, invalid("%s is %s; it must be between %s and %s", field, t, lo, hi)
	}
	return durationpb.New(d.AsDuration()), nil
}

// webhookURLForm checks the form of an endpoint URL: absolute, http or
// https, with a host, and not too long.
func webhookURLForm(raw string) error {
	if raw == "" {
		return invalid("subscription.webhook.url is required")
	}
	if len(raw) > maxURL {
		return invalid("subscription.webhook.url is longer than %d characters", maxURL)
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return invalid("subscription.webhook.url %q must be an absolute http or https URL", raw)
	}
	if u.Fragment != "" {
		return invalid("subscription.webhook.url %q has a fragment (#...), which is never sent: remove it", raw)
	}
	return nil
}

// webhookHeaders checks an endpoint's extra request headers: at most
// maxWebhookHeaders, each a valid field name (an RFC 9110 token) that is not
// one Herald sets or that belongs to the connection, with a value that is a
// valid field value. Names are compared without regard to case.
func webhookHeaders(in map[string]string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	if len(in) > maxWebhookHeaders {
		return nil, invalid("subscription.webhook.headers has %d entries, more than the %d allowed", len(in), maxWebhookHeaders)
	}
	out := make(map[string]string, len(in))
	seen := map[string]string{}
	for name, value := range in {
		field := fmt.Sprintf("subscription.webhook.headers[%q]", name)
		if name == "" || len(name) > maxHeaderName || !isToken(name) {
			return nil, invalid("%s: a header name is a token of letters, digits and !#$%%&'*+-.^_`|~ (at most %d characters)", field, maxHeaderName)
		}
		lower := strings.ToLower(name)
		switch {
		case strings.HasPrefix(lower, "webhook-"):
			return nil, invalid("%s: webhook-* headers are the Standard Webhooks headers Herald sets", field)
		case strings.HasPrefix(lower, "ce-"):
			return nil, invalid("%s: ce-* headers are the CloudEvents attributes Herald sets", field)
		case lower == "content-type" || lower == "content-length" || lower == "host":
			return nil, invalid("%s: Herald sets %s itself", field, name)
		case hopByHop[lower]:
			return nil, invalid("%s is a hop-by-hop header, which belongs to the connection, not the request", field)
		}
		if other, dup := seen[lower]; dup {
			return nil, invalid("subscription.webhook.headers names %q and %q, which are the same header", other, name)
		}
		seen[lower] = name
		if len(value) > maxHeaderValue {
			return nil, invalid("%s is %d bytes, more than the %d allowed", field, len(value), maxHeaderValue)
		}
		if !validFieldValue(value) {
			return nil, invalid("%s: a header value may not hold control characters (CR, LF, NUL...) or start or end with white space", field)
		}
		out[name] = value
	}
	return out, nil
}

// isToken reports whether s is an RFC 9110 token.
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validFieldValue reports whether s is an RFC 9110 field value: visible
// characters, spaces and tabs inside, bytes from 0x80 (obs-text), and no
// leading or trailing white space.
func validFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return s == strings.Trim(s, " \t")
}

// errNoSecretKey is why webhook endpoints cannot be created without a
// secret key.
var errNoSecretKey = failedPrecondition("webhook endpoints are not available: the operator must set HERALD_SECRET_KEY (base64 of 32 random bytes, e.g. `openssl rand -base64 32`) so that signing secrets are stored encrypted; stream subscriptions work without it")

// checkEndpointURL applies the outbound policy to an endpoint URL: the
// error says why in the customer's terms, never with a resolved address.
func (h *Handler) checkEndpointURL(ctx context.Context, raw string) error {
	err := h.webhooks.Policy.CheckURL(ctx, raw)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, safehttp.ErrRefused), errors.Is(err, safehttp.ErrResolve):
		return invalid("subscription.webhook.url: %v", err)
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return fmt.Errorf("check webhook url: %w", err)
	}
}

// forClient returns sub as clients see it: a webhook endpoint's sealed
// secrets removed (only the services that sign see them, on Watch). sub
// itself is not changed.
func forClient(sub *registryv1.Subscription) *registryv1.Subscription {
	wh := sub.GetWebhook()
	if wh == nil || len(wh.GetSecrets()) == 0 {
		return sub
	}
	out := proto.Clone(sub).(*registryv1.Subscription)
	for _, s := range out.GetWebhook().GetSecrets() {
		s.Sealed = ""
	}
	return out
}
