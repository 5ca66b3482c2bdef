package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/webhook"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Response capture bounds.
const (
	maxResponseBody = 4 << 10  // kept with the attempt
	maxDrain        = 64 << 10 // read past that, so the connection can be reused
	userAgent       = "Herald-Webhooks/1.0"
)

// request is one rendered delivery: the same bytes for every attempt but
// the timestamp and signature.
type request struct {
	body        []byte
	contentType string
	ce          http.Header // binary mode: the ce-* headers
}

// render puts an event in a request the endpoint's way: structured JSON
// (the default) or the CloudEvents HTTP binary mode.
func render(ev *eventv1.CloudEvent, mode registryv1.WebhookContentMode) (request, error) {
	if mode != registryv1.WebhookContentMode_WEBHOOK_CONTENT_MODE_BINARY {
		b, err := cloudevent.MarshalJSON(ev)
		if err != nil {
			return request{}, fmt.Errorf("render the event: %w", err)
		}
		return request{body: b, contentType: "application/cloudevents+json"}, nil
	}
	h := http.Header{}
	h.Set("ce-specversion", ev.GetSpecVersion())
	h.Set("ce-id", ev.GetId())
	h.Set("ce-source", ev.GetSource())
	h.Set("ce-type", ev.GetType())
	ct := cloudevent.ContentType(ev)
	for k, v := range ev.GetAttributes() {
		if k == "datacontenttype" {
			continue
		}
		// Header values are strings; the HTTP binding percent-encodes
		// what is not printable ASCII.
		h.Set("ce-"+k, percentEncode(cloudevent.AttributeString(v)))
	}
	var body []byte
	switch d := ev.GetData().(type) {
	case *eventv1.CloudEvent_TextData:
		body = []byte(d.TextData)
	case *eventv1.CloudEvent_BinaryData:
		body = d.BinaryData
	case *eventv1.CloudEvent_ProtoData:
		body = d.ProtoData.GetValue()
		if ct == "" {
			ct = "application/protobuf"
		}
	}
	return request{body: body, contentType: ct, ce: h}, nil
}

// percentEncode encodes, as the CloudEvents HTTP binding asks, the bytes of
// a header value outside printable ASCII, and '%' and '"'.
func percentEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' || c == '"' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// outcome is what one attempt came to.
type outcome struct {
	status     int
	latency    time.Duration
	err        string // why it failed, for people
	headers    map[string]string
	body       []byte
	success    bool
	gone       bool          // 410: the receiver says the endpoint is no more
	retryAfter time.Duration // asked for by a 429 or 503
	// reqHeaders and reqBody are what was sent (custom header values
	// masked, the body's first maxResponseBody bytes).
	reqHeaders map[string]string
	reqBody    []byte
}

// send makes one signed request to the endpoint.
func send(ctx context.Context, client *http.Client, ep *endpoint, signer *webhook.Signer, id string, req request, now time.Time) outcome {
	ctx, cancel := context.WithTimeout(ctx, ep.timeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.url, bytes.NewReader(req.body))
	if err != nil {
		return outcome{err: "the endpoint URL cannot be requested: " + err.Error()}
	}
	for k, v := range ep.headers {
		hr.Header.Set(k, v)
	}
	for k, v := range req.ce {
		hr.Header[k] = v
	}
	if req.contentType != "" {
		hr.Header.Set("Content-Type", req.contentType)
	}
	hr.Header.Set("User-Agent", userAgent)
	signer.Headers(hr.Header, id, now, req.body)
	sent := flatten(hr.Header)
	for k := range ep.headers {
		if _, ok := sent[http.CanonicalHeaderKey(k)]; ok {
			sent[http.CanonicalHeaderKey(k)] = "(custom header, value hidden)"
		}
	}
	sentBody := req.body[:min(len(req.body), maxResponseBody)]
	start := time.Now()
	resp, err := client.Do(hr)
	if err != nil {
		return outcome{latency: time.Since(start), err: describe(err, ep.timeout), reqHeaders: sent, reqBody: sentBody}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	o := outcome{status: resp.StatusCode, latency: time.Since(start), body: body, headers: flatten(resp.Header), reqHeaders: sent, reqBody: sentBody}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		o.success = true
	case resp.StatusCode == http.StatusGone:
		o.gone = true
		o.err = "the endpoint answered 410 Gone: it is disabled"
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		o.err = fmt.Sprintf("the endpoint answered %d %s; redirects are never followed: give the final URL", resp.StatusCode, http.StatusText(resp.StatusCode))
	default:
		o.err = fmt.Sprintf("the endpoint answered %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			o.retryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
	}
	return o
}

// describe says why a request got no response, without our network's
// addresses.
func describe(err error, timeout time.Duration) string {
	var refused *safehttp.RefusedError
	var resolve *safehttp.ResolveError
	var dial *safehttp.DialError
	var netErr net.Error
	switch {
	case errors.As(err, &refused):
		return refused.Error()
	case errors.As(err, &resolve):
		return resolve.Error()
	case errors.As(err, &dial):
		return dial.Error()
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Sprintf("no response within the endpoint's timeout of %s", timeout)
	case strings.Contains(err.Error(), "tls:"), strings.Contains(err.Error(), "x509:"):
		return "the TLS handshake failed: " + lastPart(err.Error())
	}
	return "the request failed: " + lastPart(err.Error())
}

// lastPart drops the "Post \"url\": " prefix net/http puts on errors.
func lastPart(s string) string {
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// retryAfter parses a Retry-After value (seconds or an HTTP date); 0 for
// none or nonsense. It is capped at a day.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), 24*time.Hour)
}

// flatten keeps the first value of each response header, at most 50.
func flatten(h http.Header) map[string]string {
	out := make(map[string]string, min(len(h), 50))
	for k, v := range h {
		if len(out) == 50 {
			break
		}
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	return out
}

// attemptOf is the record of one attempt.
func attemptOf(ep *endpoint, cursor string, ev *eventv1.CloudEvent, n int32, at time.Time, o outcome, trigger edgev1.AttemptTrigger) *edgev1.Attempt {
	return &edgev1.Attempt{
		SubscriptionId: ep.id, Cursor: cursor, EventId: ev.GetId(), EventType: ev.GetType(), Number: n,
		Time: timestamppb.New(at), Status: int32(o.status), LatencyMs: o.latency.Milliseconds(), Success: o.success,
		Error: o.err, ResponseHeaders: o.headers, ResponseBody: o.body, Trigger: trigger,
		RequestHeaders: o.reqHeaders, RequestBody: o.reqBody,
	}
}
