package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/webhook"
)

// Endpoint validation: before a webhook endpoint gets events, it must say
// it wants them, so that Herald cannot be pointed at someone else's server.
// First the CloudEvents abuse-protection handshake
// (https://github.com/cloudevents/spec/blob/main/cloudevents/http-webhook.md,
// section 4): an OPTIONS request with WebHook-Request-Origin, answered with a
// WebHook-Allowed-Origin of that origin or "*". An endpoint that does not do
// the handshake gets a signed herald.endpoint.ping instead, which it must
// answer with a 2xx. Redirects are never followed.
const (
	// PingType is the CloudEvents type of the validation ping.
	PingType = "herald.endpoint.ping"
	// requestRate is the WebHook-Request-Rate Herald asks for (requests per
	// minute). Whatever WebHook-Allowed-Rate answers is accepted: the
	// endpoint's rate_limit is what bounds deliveries.
	requestRate = "120"
	userAgent   = "Herald-Webhooks/1"
	// maxDrain is how much of a validation response is read, so that the
	// connection can be reused; the rest is dropped.
	maxDrain = 4 << 10
)

// validateEndpoint runs the handshake, or the ping, against the endpoint of
// sub, signing the ping with keys. It returns nil when the endpoint consents,
// else a FAILED_PRECONDITION that says what the endpoint answered.
func (h *Handler) validateEndpoint(ctx context.Context, sub *registryv1.Subscription, keys []string) error {
	wh := sub.GetWebhook()
	client := h.webhooks.Policy.Client(wh.GetTimeout().AsDuration())
	defer client.CloseIdleConnections()

	consent, err := h.handshake(ctx, client, wh)
	if err != nil || consent {
		return err
	}
	return ping(ctx, client, sub, keys)
}

// handshake sends the abuse-protection OPTIONS request. It reports
// consent; false with no error means the endpoint does not do the handshake
// (so the ping decides).
func (h *Handler) handshake(ctx context.Context, client *http.Client, wh *registryv1.WebhookChannel) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodOptions, wh.GetUrl(), nil)
	if err != nil {
		return false, invalid("subscription.webhook.url: %v", err)
	}
	setExtraHeaders(req.Header, wh)
	req.Header.Set("WebHook-Request-Origin", h.webhooks.Origin)
	req.Header.Set("WebHook-Request-Rate", requestRate)
	res, err := client.Do(req)
	if err != nil {
		return false, unreachable(ctx, "the validation handshake", wh, err)
	}
	drain(res)
	allowed := strings.TrimSpace(res.Header.Get("WebHook-Allowed-Origin"))
	switch {
	case allowed == "":
		return false, nil
	case allowed == "*" || strings.EqualFold(allowed, h.webhooks.Origin):
		if res.StatusCode/100 == 2 {
			return true, nil
		}
		return false, failedPrecondition("the endpoint answered %d to the validation handshake (OPTIONS); it must answer 2xx with WebHook-Allowed-Origin", res.StatusCode)
	default:
		return false, failedPrecondition("the endpoint's validation handshake allows the origin %q, not Herald's %q: answer WebHook-Allowed-Origin: %s (or *)",
			cut(allowed, 100), h.webhooks.Origin, h.webhooks.Origin)
	}
}

// pingData is the data of a herald.endpoint.ping event.
type pingData struct {
	SubscriptionID string `json:"subscription_id"`
	ApplicationID  string `json:"application_id"`
}

// ping POSTs a signed herald.endpoint.ping CloudEvent, in the endpoint's
// content mode, and requires a 2xx.
func ping(ctx context.Context, client *http.Client, sub *registryv1.Subscription, keys []string) error {
	wh := sub.GetWebhook()
	signer, err := webhook.NewSigner(keys...)
	if err != nil {
		return fmt.Errorf("signer for %s: %w", sub.GetId(), err)
	}
	id := auth.NewID("evt_")
	now := time.Now().UTC()
	data, err := json.Marshal(pingData{SubscriptionID: sub.GetId(), ApplicationID: sub.GetApplicationId()})
	if err != nil {
		return err
	}
	attrs := map[string]string{
		"specversion": "1.0", "id": id, "source": "herald", "type": PingType,
		"time": now.Format(time.RFC3339Nano), "subject": sub.GetId(),
	}
	header := http.Header{}
	setExtraHeaders(header, wh)
	var body []byte
	if wh.GetContentMode() == registryv1.WebhookContentMode_WEBHOOK_CONTENT_MODE_BINARY {
		for k, v := range attrs {
			header.Set("ce-"+k, v)
		}
		header.Set("Content-Type", "application/json")
		body = data
	} else {
		event := map[string]any{"datacontenttype": "application/json", "data": json.RawMessage(data)}
		for k, v := range attrs {
			event[k] = v
		}
		if body, err = json.Marshal(event); err != nil {
			return err
		}
		header.Set("Content-Type", "application/cloudevents+json")
	}
	signer.Headers(header, id, now, body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, wh.GetUrl(), bytes.NewReader(body))
	if err != nil {
		return invalid("subscription.webhook.url: %v", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := client.Do(req)
	if err != nil {
		return unreachable(ctx, "the validation ping", wh, err)
	}
	drain(res)
	switch {
	case res.StatusCode/100 == 2:
		return nil
	case res.StatusCode/100 == 3:
		return failedPrecondition("the endpoint answered %d to the validation ping: redirects are not followed, give the final URL", res.StatusCode)
	default:
		return failedPrecondition("the endpoint answered %d to the validation ping (a %s event, which must be answered with a 2xx, or do the CloudEvents webhook validation handshake)", res.StatusCode, PingType)
	}
}

// setExtraHeaders sets the endpoint's own extra headers (an endpoint may
// need its Authorization even to answer a validation request).
func setExtraHeaders(h http.Header, wh *registryv1.WebhookChannel) {
	for k, v := range wh.GetHeaders() {
		h.Set(k, v)
	}
	h.Set("User-Agent", userAgent)
}

func drain(res *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, maxDrain))
	_ = res.Body.Close()
}

// unreachable is the FAILED_PRECONDITION of a validation request that got
// no answer, in words that name the host and never an address.
func unreachable(ctx context.Context, what string, wh *registryv1.WebhookChannel, err error) error {
	var refused *safehttp.RefusedError
	var dial *safehttp.DialError
	var resolve *safehttp.ResolveError
	var certErr *tls.CertificateVerificationError
	var hostErr x509.HostnameError
	var unknownAuthority x509.UnknownAuthorityError
	var expired x509.CertificateInvalidError
	var reason string
	switch {
	case errors.As(err, &refused):
		return invalid("subscription.webhook.url: %v", refused)
	case errors.As(err, &resolve):
		reason = resolve.Error()
	case errors.As(err, &dial):
		reason = dial.Error()
	case errors.As(err, &hostErr):
		reason = "its TLS certificate is not valid for the host"
	case errors.As(err, &unknownAuthority):
		reason = "its TLS certificate is not signed by a known authority"
	case errors.As(err, &expired):
		reason = "its TLS certificate is not valid (expired or not yet valid)"
	case errors.As(err, &certErr):
		reason = "its TLS certificate does not verify"
	case ctx.Err() != nil:
		return ctx.Err()
	case isTimeout(err):
		reason = "no answer within " + wh.GetTimeout().AsDuration().String() + " (the endpoint's timeout)"
	default:
		reason = "the request failed before an answer (connection closed, TLS or protocol error)"
	}
	return failedPrecondition("%s of the endpoint got no answer: %s", what, reason)
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// cut shortens s to at most n bytes, for echoing what an endpoint sent.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
