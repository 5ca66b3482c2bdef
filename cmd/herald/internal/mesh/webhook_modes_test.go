package mesh_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/webhook"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// signatures are the entries of a webhook-signature header.
func signatures(h hit) []string { return strings.Fields(h.header.Get("webhook-signature")) }

// verifies reports whether a delivery verifies with exactly these keys.
func verifies(t *testing.T, h hit, keys ...string) error {
	t.Helper()
	v, err := webhook.NewVerifier(keys...)
	if err != nil {
		t.Fatalf("verifier of %d keys: %v", len(keys), err)
	}
	return v.Verify(h.header, h.body, time.Now())
}

// jwks fetches an endpoint's public key set from the edge, with no key, and
// reads it with go-jose: the whpk_ keys by kid. A status other than 200 is
// returned with no keys.
func (e *env) jwks(t *testing.T, jwksURL string) (int, map[string]string) {
	t.Helper()
	res, err := http.Get(jwksURL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	doc, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, nil
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/jwk-set+json" {
		t.Fatalf("JWKS content type %q", ct)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(doc, &set); err != nil {
		t.Fatalf("go-jose cannot read the JWKS: %v\n%s", err, doc)
	}
	keys := map[string]string{}
	for _, k := range set.Keys {
		pub, ok := k.Key.(ed25519.PublicKey)
		if !ok || !k.IsPublic() || !k.Valid() || k.Use != "sig" || k.Algorithm != string(jose.EdDSA) {
			t.Fatalf("JWKS key %+v is not a public Ed25519 signing key", k)
		}
		keys[k.KeyID] = webhook.PrefixPublicKey + base64.StdEncoding.EncodeToString(pub)
	}
	// The package's own reader agrees with go-jose.
	if own, err := webhook.ParseJWKS(doc); err != nil || len(own) != len(keys) {
		t.Fatalf("webhook.ParseJWKS: %v %v, go-jose read %v", own, err, keys)
	}
	return res.StatusCode, keys
}

func (e *env) rotate(t *testing.T, id string, overlap time.Duration) (*registryv1.Subscription, string) {
	t.Helper()
	res, err := e.reg.RotateWebhookSecret(context.Background(), connect.NewRequest(&registryv1.RotateWebhookSecretRequest{Id: id, Overlap: durationpb.New(overlap)}))
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	return res.Msg.GetSubscription(), res.Msg.GetWebhookSecret()
}

// await returns the request with webhook-id id, once it came.
func (r *receiver) await(t *testing.T, id string) hit {
	t.Helper()
	var found hit
	testutil.Eventually(t, 20*time.Second, func() bool {
		for _, h := range r.got() {
			if h.header.Get("webhook-id") == id {
				found = h
				return true
			}
		}
		return false
	}, "delivery "+id)
	return found
}

// untilSigned publishes probes until each receiver gets one with n
// signatures: a rotation reaches the edge's catalog cache (and its JWKS) at
// once, but the endpoint's deliveries only once the engine has stopped its
// old runner, and the engine stops changed endpoints one at a time, each
// taking up to about half a second.
func (e *env) untilSigned(t *testing.T, stage string, n int, rs ...*receiver) {
	t.Helper()
	for i := 0; ; i++ {
		id := fmt.Sprintf("probe-%s-%d", stage, i)
		e.publish(invoiceEvent(id, i))
		done := true
		for _, r := range rs {
			done = len(signatures(r.await(t, id))) == n && done
		}
		if done {
			return
		}
		if i == 50 {
			t.Fatalf("%s: after %d probes, deliveries still not signed %d times", stage, i+1, n)
		}
	}
}

// An Ed25519 endpoint's deliveries carry v1a signatures that verify with
// the public keys the edge publishes as a JWKS (read by go-jose); during a
// rotation's overlap both keys are published and both sign every request;
// a rotation without overlap retires the old keys from the set and the
// signatures at once. An HMAC endpoint's rotation signs with both secrets
// in the same way.
func TestWebhookEd25519WithJWKSAndRotations(t *testing.T) {
	e := startWebhooks(t)
	ed := newReceiver(t, nil)
	hm := newReceiver(t, nil)
	edSub, edPub := e.createEndpoint(t, &registryv1.WebhookChannel{Url: ed.URL, Signing: registryv1.WebhookSigning_WEBHOOK_SIGNING_ED25519})
	hmSub, oldSecret := e.createEndpoint(t, &registryv1.WebhookChannel{Url: hm.URL})
	if !strings.HasPrefix(edPub, webhook.PrefixPublicKey) || !strings.HasPrefix(oldSecret, webhook.PrefixSecret) {
		t.Fatalf("shown secrets %q, %q", edPub, oldSecret)
	}
	jwksURL := edSub.GetWebhook().GetJwksUrl()
	if want := "/v1/webhooks/" + edSub.GetId() + "/jwks.json"; !strings.HasSuffix(jwksURL, want) || !strings.HasPrefix(jwksURL, rpc.BaseURL(e.common.EdgeAddr)) {
		t.Fatalf("jwks_url %q", jwksURL)
	}
	code, keys := e.jwks(t, jwksURL)
	if code != http.StatusOK || len(keys) != 1 || keys[edSub.GetWebhook().GetSecrets()[0].GetId()] != edPub {
		t.Fatalf("JWKS %d %v, want the created key %s", code, keys, edPub)
	}
	// An HMAC endpoint and an unknown one have no key set.
	for _, id := range []string{hmSub.GetId(), "sub_nope"} {
		if code, _ := e.jwks(t, rpc.BaseURL(e.common.EdgeAddr)+"/v1/webhooks/"+id+"/jwks.json"); code != http.StatusNotFound {
			t.Fatalf("JWKS of %s: %d", id, code)
		}
	}
	firstKeys := slices.Collect(maps.Values(keys))

	e.publish(invoiceEvent("ed-1", 1))
	testutil.Eventually(t, 20*time.Second, func() bool { return len(ed.got()) == 1 && len(hm.got()) == 1 }, "first deliveries")
	h := ed.got()[0]
	if s := signatures(h); len(s) != 1 || !strings.HasPrefix(s[0], "v1a,") {
		t.Fatalf("Ed25519 delivery signed %v", s)
	}
	if err := verifies(t, h, firstKeys...); err != nil {
		t.Fatalf("the delivery does not verify with the JWKS key: %v", err)
	}
	if err := verifies(t, hm.got()[0], oldSecret); err != nil || len(signatures(hm.got()[0])) != 1 {
		t.Fatalf("HMAC delivery %v: %v", signatures(hm.got()[0]), err)
	}
	// The public key of another endpoint does not verify it.
	_, stranger := webhook.NewSigningKey()
	if err := verifies(t, h, stranger); err == nil {
		t.Fatal("a delivery verifies with an unrelated public key")
	}

	// Rotation with an overlap: both keys published, both sign.
	// The HMAC endpoint rotates first: the edge sees catalog changes in
	// order, so the JWKS showing the Ed25519 rotation says it has both.
	_, newSecret := e.rotate(t, hmSub.GetId(), time.Hour)
	_, edPub2 := e.rotate(t, edSub.GetId(), time.Hour)
	testutil.Eventually(t, 10*time.Second, func() bool { _, k := e.jwks(t, jwksURL); return len(k) == 2 }, "both keys in the JWKS")
	_, keys = e.jwks(t, jwksURL)
	if !slices.Contains(slices.Collect(maps.Values(keys)), edPub2) || !slices.Contains(slices.Collect(maps.Values(keys)), edPub) {
		t.Fatalf("JWKS during the overlap %v, want %s and %s", keys, edPub, edPub2)
	}
	e.untilSigned(t, "overlap", 2, ed, hm)
	e.publish(invoiceEvent("ed-2", 2))
	h = ed.await(t, "ed-2")
	if s := signatures(h); len(s) != 2 || !strings.HasPrefix(s[0], "v1a,") || !strings.HasPrefix(s[1], "v1a,") {
		t.Fatalf("Ed25519 delivery during the overlap signed %q", h.header.Get("webhook-signature"))
	}
	for kid, k := range keys {
		// Each key alone verifies: each made one of the signatures.
		if err := verifies(t, h, k); err != nil {
			t.Fatalf("key %s alone does not verify the overlap's delivery: %v", kid, err)
		}
	}
	hh := hm.await(t, "ed-2")
	if s := signatures(hh); len(s) != 2 || !strings.HasPrefix(s[0], "v1,") || !strings.HasPrefix(s[1], "v1,") {
		t.Fatalf("HMAC delivery during the overlap signed %q", hh.header.Get("webhook-signature"))
	}
	for i, secret := range []string{oldSecret, newSecret} {
		if err := verifies(t, hh, secret); err != nil {
			t.Fatalf("HMAC secret %d alone does not verify the overlap's delivery: %v", i+1, err)
		}
	}

	// Rotation without overlap: only the newest key is published and signs.
	_, lastSecret := e.rotate(t, hmSub.GetId(), 0)
	_, edPub3 := e.rotate(t, edSub.GetId(), 0)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, k := e.jwks(t, jwksURL)
		return len(k) == 1 && slices.Contains(slices.Collect(maps.Values(k)), edPub3)
	}, "only the newest key in the JWKS")
	e.untilSigned(t, "no-overlap", 1, ed, hm)
	e.publish(invoiceEvent("ed-3", 3))
	h, hh = ed.await(t, "ed-3"), hm.await(t, "ed-3")
	if len(signatures(h)) != 1 || verifies(t, h, edPub3) != nil || verifies(t, h, edPub, edPub2) == nil {
		t.Fatalf("Ed25519 delivery after a rotation without overlap: %v", signatures(h))
	}
	if len(signatures(hh)) != 1 || verifies(t, hh, lastSecret) != nil || verifies(t, hh, oldSecret, newSecret) == nil {
		t.Fatalf("HMAC delivery after a rotation without overlap: %v", signatures(hh))
	}

	// A short overlap ends by itself, with no catalog change: the old key
	// leaves the set and stops signing.
	_, shortSecret := e.rotate(t, hmSub.GetId(), 2*time.Second)
	_, edPub4 := e.rotate(t, edSub.GetId(), 2*time.Second)
	testutil.Eventually(t, 10*time.Second, func() bool { _, k := e.jwks(t, jwksURL); return len(k) == 2 }, "both keys during the short overlap")
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, k := e.jwks(t, jwksURL)
		return len(k) == 1 && slices.Contains(slices.Collect(maps.Values(k)), edPub4)
	}, "the old key leaves the JWKS when the overlap ends")
	e.publish(invoiceEvent("ed-4", 4))
	h, hh = ed.await(t, "ed-4"), hm.await(t, "ed-4")
	if len(signatures(h)) != 1 || verifies(t, h, edPub4) != nil || verifies(t, h, edPub3) == nil {
		t.Fatalf("Ed25519 delivery after the overlap ended: %v", signatures(h))
	}
	if len(signatures(hh)) != 1 || verifies(t, hh, shortSecret) != nil || verifies(t, hh, lastSecret) == nil {
		t.Fatalf("HMAC delivery after the overlap ended: %v", signatures(hh))
	}
}

// A binary-mode endpoint gets the CloudEvents HTTP binary mode: the
// attributes as ce-* headers (percent-encoded outside printable ASCII), the
// data's content type, the data bytes as the body, signed as sent. The same
// event to a structured endpoint carries the same attributes and data.
func TestWebhookBinaryContentMode(t *testing.T) {
	e := startWebhooks(t)
	bin := newReceiver(t, nil)
	structured := newReceiver(t, nil)
	binSub, binSecret := e.createEndpoint(t, &registryv1.WebhookChannel{Url: bin.URL, ContentMode: registryv1.WebhookContentMode_WEBHOOK_CONTENT_MODE_BINARY})
	structSub, structSecret := e.createEndpoint(t, &registryv1.WebhookChannel{Url: structured.URL})
	at := time.Date(2026, 12, 2, 13, 0, 0, 123456789, time.UTC)
	ev := invoiceEvent("bin-1", 42)
	data := ev.GetTextData()
	str := func(s string) *eventv1.CloudEvent_CloudEventAttributeValue {
		return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: s}}
	}
	ev.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
		"datacontenttype": str("application/json"),
		"subject":         str("facture-n°7 \"50%\""),
		"partitionkey":    str("acme"),
		"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(at)}},
	}
	cur := e.publish(ev)[0]
	t.Cleanup(func() {
		if t.Failed() {
			for _, id := range []string{binSub.GetId(), structSub.GetId()} {
				at, err := e.webhooks(e.appKey).ListAttempts(context.Background(), connect.NewRequest(&edgev1.ListAttemptsRequest{SubscriptionId: id, Cursor: cur}))
				t.Logf("attempts of %s: %v %v", id, at.Msg.GetAttempts(), err)
			}
		}
	})
	testutil.Eventually(t, 20*time.Second, func() bool { return len(bin.got()) == 1 && len(structured.got()) == 1 }, "both endpoints delivered")
	b, s := bin.got()[0], structured.got()[0]
	if string(b.body) != data {
		t.Fatalf("binary body %q, want the data %q", b.body, data)
	}
	if ct := b.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("binary Content-Type %q", ct)
	}
	if err := verifies(t, b, binSecret); err != nil {
		t.Fatalf("binary delivery does not verify over its body: %v", err)
	}
	if b.header.Get("webhook-id") != "bin-1" {
		t.Fatalf("webhook-id %q", b.header.Get("webhook-id"))
	}
	if b.header.Get("ce-datacontenttype") != "" {
		t.Fatal("binary mode carries datacontenttype as a ce- header, not as Content-Type")
	}
	var se map[string]any
	if err := json.Unmarshal(s.body, &se); err != nil || verifies(t, s, structSecret) != nil {
		t.Fatalf("structured delivery %s: %v", s.body, err)
	}
	if ct := s.header.Get("Content-Type"); ct != "application/cloudevents+json" || s.header.Get("ce-id") != "" {
		t.Fatalf("structured delivery has Content-Type %q and ce-id %q", ct, s.header.Get("ce-id"))
	}
	for _, attr := range []string{"id", "source", "type", "specversion", "time", "subject", "partitionkey"} {
		raw := b.header.Get("ce-" + attr)
		got, err := url.PathUnescape(raw)
		if err != nil || got != se[attr] {
			t.Fatalf("ce-%s %q (decoded %q), structured %s %v", attr, raw, got, attr, se[attr])
		}
		for _, c := range []byte(raw) {
			if c < 0x20 || c > 0x7e || c == '"' {
				t.Fatalf("ce-%s %q is not percent-encoded", attr, raw)
			}
		}
	}
	if b.header.Get("ce-specversion") != "1.0" || b.header.Get("ce-type") != e.invoice {
		t.Fatalf("ce headers %v", b.header)
	}
	if tm, err := time.Parse(time.RFC3339Nano, b.header.Get("ce-time")); err != nil || !tm.Equal(at) {
		t.Fatalf("ce-time %q: %v", b.header.Get("ce-time"), err)
	}
	if se["datacontenttype"] != "application/json" {
		t.Fatalf("structured datacontenttype %v", se["datacontenttype"])
	}

	// Binary data goes as its bytes, with its own content type.
	raw := []byte(`{"invoice_id": "bin-2", "amount": 7}`)
	ev2 := invoiceEvent("bin-2", 7)
	ev2.Data = &eventv1.CloudEvent_BinaryData{BinaryData: raw}
	ev2.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{"datacontenttype": str("application/vnd.herald.invoice+json")}
	e.publish(ev2)
	testutil.Eventually(t, 20*time.Second, func() bool { return len(bin.got()) == 2 }, "binary data delivered")
	b2 := bin.got()[1]
	if string(b2.body) != string(raw) || b2.header.Get("Content-Type") != "application/vnd.herald.invoice+json" || b2.header.Get("ce-id") != "bin-2" || verifies(t, b2, binSecret) != nil {
		t.Fatalf("binary data delivered as %q, Content-Type %q, ce-id %q", b2.body, b2.header.Get("Content-Type"), b2.header.Get("ce-id"))
	}
	var structuredData, binData any
	sd, _ := json.Marshal(se["data"])
	if json.Unmarshal(sd, &structuredData) != nil || json.Unmarshal(b.body, &binData) != nil || fmt.Sprint(structuredData) != fmt.Sprint(binData) {
		t.Fatalf("data differs: structured %s, binary %s", sd, b.body)
	}
}

// inflight is a receiver that records how many of its requests are in
// flight at once, each held for hold.
type inflight struct {
	*receiver
	now, peak atomic.Int32
}

func newInflight(t *testing.T, hold time.Duration) *inflight {
	in := &inflight{}
	in.receiver = newReceiver(t, func(int, hit) int {
		n := in.now.Add(1)
		for {
			p := in.peak.Load()
			if n <= p || in.peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(hold)
		in.now.Add(-1)
		return http.StatusOK
	})
	return in
}

// A rate-limited endpoint never gets more than its rate (plus its burst)
// in any one-second window, a concurrency-limited one never more requests
// at once than its max_concurrency, and both get everything, once.
func TestWebhookRateLimitAndMaxConcurrency(t *testing.T) {
	e := startWebhooks(t)
	const rate, n = 20, 40
	limited := newInflight(t, 0)
	narrow := newInflight(t, 100*time.Millisecond)
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: limited.URL, RateLimit: rate, MaxConcurrency: 10})
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: narrow.URL, MaxConcurrency: 2})
	events := make([]*eventv1.CloudEvent, n)
	for i := range events {
		events[i] = invoiceEvent(fmt.Sprintf("rl-%02d", i), i)
	}
	e.publish(events...)
	testutil.Eventually(t, 20*time.Second, func() bool { return len(limited.got()) >= n && len(narrow.got()) >= n }, "every event to both endpoints")
	time.Sleep(300 * time.Millisecond)
	for name, r := range map[string]*inflight{"rate-limited": limited, "concurrency-limited": narrow} {
		ids := r.ids()
		slices.Sort(ids)
		if len(ids) != n || len(slices.Compact(ids)) != n {
			t.Fatalf("%s endpoint got %d requests, %d distinct ids", name, len(ids), len(slices.Compact(ids)))
		}
	}
	if p := narrow.peak.Load(); p > 2 {
		t.Fatalf("max_concurrency 2, but %d requests were in flight at once", p)
	}
	// The limiter's burst is a tenth of the rate (at least 1); a quarter of
	// a second of slack covers requests that left on time and arrived
	// together. Without the limit, the 40 events arrive within far less
	// than a second.
	burst := max(1, rate/10)
	bound := rate + burst + rate/4
	hits := limited.got()
	for i, h := range hits {
		in := 0
		for _, o := range hits[i:] {
			if o.at.Sub(h.at) < time.Second {
				in++
			}
		}
		if in > bound {
			t.Fatalf("%d requests in the second from request %d, more than rate %d + burst %d (+%d slack)", in, i, rate, burst, rate/4)
		}
	}
	t.Logf("rate-limited: first to last request %v; concurrency-limited peak %d", hits[len(hits)-1].at.Sub(hits[0].at), narrow.peak.Load())
}

// Custom headers are sent with every request; a 3xx is a failed attempt
// whose redirect is never followed; a 503 or 429 with Retry-After holds the
// next attempt back at least that long.
func TestWebhookHeadersRedirectsAndRetryAfter(t *testing.T) {
	e := startWebhooks(t)
	var targetHits atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		targetHits.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(target.Close)
	headers := newReceiver(t, nil)
	redirect := newResponder(t, func(n int, _ hit, w http.Header) int {
		if n == 1 {
			w.Set("Location", target.URL+"/moved")
			return http.StatusTemporaryRedirect
		}
		return http.StatusOK
	})
	later := newResponder(t, func(n int, _ hit, w http.Header) int {
		switch n {
		case 1:
			w.Set("Retry-After", "2")
			return http.StatusServiceUnavailable
		case 2:
			w.Set("Retry-After", "1")
			return http.StatusTooManyRequests
		case 3:
			// An HTTP date, whole seconds: at least 2s from now.
			w.Set("Retry-After", time.Now().Add(3*time.Second).UTC().Format(http.TimeFormat))
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: headers.URL, Headers: map[string]string{
		"X-Partner-Tenant": "acme", "Authorization": "Bearer partner-token-1",
	}})
	redirSub, _ := e.createEndpoint(t, &registryv1.WebhookChannel{Url: redirect.URL, RetrySchedule: short(50 * time.Millisecond)})
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: later.URL, RetrySchedule: short(10*time.Millisecond, 10*time.Millisecond, 10*time.Millisecond, 10*time.Millisecond)})
	cur := e.publish(invoiceEvent("hdr-1", 1))[0]

	testutil.Eventually(t, 20*time.Second, func() bool { return len(headers.got()) == 1 }, "delivered with headers")
	h := headers.got()[0]
	if h.header.Get("X-Partner-Tenant") != "acme" || h.header.Get("Authorization") != "Bearer partner-token-1" {
		t.Fatalf("custom headers not sent: %v", h.header)
	}
	if h.header.Get("webhook-id") != "hdr-1" || h.header.Get("webhook-signature") == "" || !strings.HasPrefix(h.header.Get("User-Agent"), "Herald-Webhooks/") {
		t.Fatalf("standard headers %v", h.header)
	}

	testutil.Eventually(t, 20*time.Second, func() bool { return len(redirect.got()) == 2 }, "the redirected delivery retried")
	var a []*edgev1.Attempt // newest first
	testutil.Eventually(t, 10*time.Second, func() bool {
		at, err := e.webhooks(e.appKey).ListAttempts(context.Background(), connect.NewRequest(&edgev1.ListAttemptsRequest{SubscriptionId: redirSub.GetId(), Cursor: cur}))
		if err != nil {
			t.Fatal(err)
		}
		a = at.Msg.GetAttempts()
		return len(a) == 2 // recorded once each response is in
	}, "both attempts on record")
	if len(a) != 2 || a[1].GetStatus() != http.StatusTemporaryRedirect || a[1].GetSuccess() || !strings.Contains(a[1].GetError(), "redirect") ||
		a[1].GetResponseHeaders()["Location"] != target.URL+"/moved" || !a[0].GetSuccess() {
		t.Fatalf("attempts after a redirect: %v", a)
	}

	testutil.Eventually(t, 20*time.Second, func() bool { return len(later.got()) == 4 }, "delivered after three Retry-After answers")
	hits := later.got()
	if gap := hits[1].at.Sub(hits[0].at); gap < 2*time.Second {
		t.Fatalf("503 with Retry-After: 2 retried after %v", gap)
	}
	if gap := hits[2].at.Sub(hits[1].at); gap < time.Second {
		t.Fatalf("429 with Retry-After: 1 retried after %v", gap)
	}
	if gap := hits[3].at.Sub(hits[2].at); gap < 2*time.Second {
		t.Fatalf("503 with a Retry-After date 2-3s ahead retried after %v", gap)
	}
	if n := targetHits.Load(); n != 0 {
		t.Fatalf("the redirect target got %d requests", n)
	}
}

// subscription reads a subscription from the registry.
func (e *env) subscription(t *testing.T, id string) *registryv1.Subscription {
	t.Helper()
	got, err := e.reg.GetSubscription(context.Background(), connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: id}))
	if err != nil {
		t.Fatal(err)
	}
	return got.Msg.GetSubscription()
}

// An endpoint that fails for longer than its disable_after is disabled
// (with a reason and a time), herald.endpoint.disabled is delivered to a
// subscriber of the herald domain, and nothing more is sent to it; enabled
// again, it gets what was queued meanwhile.
func TestWebhookDisabledAfterFailingThenEnabledAgain(t *testing.T) {
	// The contract's shortest disable_after is a minute; the registry lets
	// tests go lower.
	t.Setenv("HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER", "1s")
	e := startWebhooks(t)
	var healthy atomic.Bool
	r := newReceiver(t, func(int, hit) int {
		if healthy.Load() {
			return http.StatusOK
		}
		return http.StatusInternalServerError
	})
	watcher := newReceiver(t, nil)
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: watcher.URL}, "herald.*")
	schedule := make([]time.Duration, 50)
	for i := range schedule {
		schedule[i] = 300 * time.Millisecond
	}
	sub, _ := e.createEndpoint(t, &registryv1.WebhookChannel{Url: r.URL, DisableAfter: durationpb.New(2 * time.Second), RetrySchedule: short(schedule...)})
	started := time.Now()
	e.publish(invoiceEvent("fail-1", 1), invoiceEvent("fail-2", 2))
	var wh *registryv1.WebhookChannel
	testutil.Eventually(t, 20*time.Second, func() bool {
		wh = e.subscription(t, sub.GetId()).GetWebhook()
		return wh.GetDisabled()
	}, "endpoint disabled after failing for its disable_after")
	disabledAt := time.Now()
	if took := disabledAt.Sub(started); took < 2*time.Second {
		t.Fatalf("disabled after %v of failures, before its disable_after of 2s", took)
	}
	if !strings.Contains(wh.GetDisabledReason(), "every attempt failed") || !strings.Contains(wh.GetDisabledReason(), "500") {
		t.Fatalf("disabled reason %q", wh.GetDisabledReason())
	}
	if dt := wh.GetDisableTime().AsTime(); dt.Before(started) || dt.After(disabledAt) {
		t.Fatalf("disable time %v, not between %v and %v", dt, started, disabledAt)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(watcher.got()) == 1 }, "herald.endpoint.disabled delivered")
	var ev struct {
		Type string            `json:"type"`
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal(watcher.got()[0].body, &ev); err != nil || ev.Type != "herald.endpoint.disabled" ||
		ev.Data["subscription_id"] != sub.GetId() || ev.Data["application_id"] != e.appID || !strings.Contains(ev.Data["reason"], "every attempt failed") {
		t.Fatalf("disabled event %s", watcher.got()[0].body)
	}

	// Disabled: nothing more is sent, though events keep coming.
	time.Sleep(500 * time.Millisecond) // requests in flight at the disabling finish
	before := len(r.got())
	e.publish(invoiceEvent("queued-1", 3), invoiceEvent("queued-2", 4))
	time.Sleep(1500 * time.Millisecond)
	if n := len(r.got()); n != before {
		t.Fatalf("a disabled endpoint got %d more requests", n-before)
	}
	// Disabled once, announced once, however many deliveries were failing.
	if n := len(watcher.got()); n != 1 {
		t.Fatalf("herald.endpoint.disabled delivered %d times for one disabling", n)
	}

	// Enabled again: what failed and what queued meanwhile is delivered.
	healthy.Store(true)
	if _, err := e.reg.UpdateSubscription(context.Background(), connect.NewRequest(&registryv1.UpdateSubscriptionRequest{
		Subscription: &registryv1.Subscription{Id: sub.GetId(), Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Disabled: false}}},
		UpdateMask:   []string{"webhook.disabled"},
	})); err != nil {
		t.Fatal(err)
	}
	if wh := e.subscription(t, sub.GetId()).GetWebhook(); wh.GetDisabled() || wh.GetDisabledReason() != "" || wh.GetDisableTime() != nil {
		t.Fatalf("enabled endpoint: %v", wh)
	}
	delivered := func() []string {
		var ok []string
		for _, h := range r.got()[before:] {
			ok = append(ok, h.header.Get("webhook-id"))
		}
		slices.Sort(ok)
		return slices.Compact(ok)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(delivered()) == 4 }, "every event delivered once enabled")
	if got := delivered(); !slices.Equal(got, []string{"fail-1", "fail-2", "queued-1", "queued-2"}) {
		t.Fatalf("delivered after enabling: %v", got)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return e.webhookCount(t) == 4+1 }, "four deliveries and the disabled event counted")
}

// keyStreamStatus is the status of an SSE stream request with key: 200 while
// the key may subscribe to types, 403 once the edge knows it may not.
func (e *env) keyStreamStatus(t *testing.T, key, types string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", rpc.BaseURL(e.common.EdgeAddr)+"/v1/stream?types="+types, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// A consumer whose subscribe grant is withdrawn gets nothing more on its
// endpoints: not the events published afterwards, and not the retries of a
// delivery that was failing when the grant went (ordered endpoints retry in
// place, unordered ones through the subscription). Other endpoints go on; a
// deleted endpoint gets nothing more either.
func TestWebhookWithdrawnGrantStopsDelivery(t *testing.T) {
	e := startWebhooks(t)
	ctx := context.Background()
	partner, partnerKey, _ := e.newReader(t, "partner")
	// Another consumer's audience narrows to partner types: the invoice
	// type (internal) goes out of its sight.
	outsider, outsiderKey, _ := e.newReader(t, "outsider")
	var failing atomic.Bool
	failing.Store(true)
	failUntilHealthy := func(int, hit) int {
		if failing.Load() {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}
	control := newReceiver(t, nil)
	deleted := newReceiver(t, nil)
	fresh := newReceiver(t, nil)
	ordered := newReceiver(t, failUntilHealthy)
	unordered := newReceiver(t, failUntilHealthy)
	unseen := newReceiver(t, failUntilHealthy)
	schedule := make([]time.Duration, 50)
	for i := range schedule {
		schedule[i] = 100 * time.Millisecond
	}
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: control.URL})
	deletedSub, _ := e.createEndpoint(t, &registryv1.WebhookChannel{Url: deleted.URL})
	freshSub, _ := e.createEndpointOf(t, partner.GetId(), &registryv1.WebhookChannel{Url: fresh.URL})
	e.createEndpointOf(t, partner.GetId(), &registryv1.WebhookChannel{Url: ordered.URL, Ordering: registryv1.WebhookOrdering_WEBHOOK_ORDERING_ORDERED, RetrySchedule: short(schedule...)})
	e.createEndpointOf(t, partner.GetId(), &registryv1.WebhookChannel{Url: unordered.URL, RetrySchedule: short(schedule...)})
	e.createEndpointOf(t, outsider.GetId(), &registryv1.WebhookChannel{Url: unseen.URL, Ordering: registryv1.WebhookOrdering_WEBHOOK_ORDERING_PARTITION_KEY, RetrySchedule: short(schedule...)})

	grantedCursor := e.publish(invoiceEvent("granted", 1))[0]
	testutil.Eventually(t, 20*time.Second, func() bool {
		return len(control.got()) == 1 && len(deleted.got()) == 1 && len(fresh.got()) == 1 && len(ordered.got()) >= 2 && len(unordered.got()) >= 2 && len(unseen.got()) >= 2
	}, "delivered while granted, and retrying")

	if _, err := e.reg.DeleteSubscription(ctx, connect.NewRequest(&registryv1.DeleteSubscriptionRequest{Id: deletedSub.GetId()})); err != nil {
		t.Fatal(err)
	}
	app, err := e.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: partner.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	upd := app.Msg.GetApplication()
	upd.Grants = []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "identity.*"}}
	if _, err := e.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: upd})); err != nil {
		t.Fatal(err)
	}
	out, err := e.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: outsider.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	narrowed := out.Msg.GetApplication()
	narrowed.Audience = registryv1.Audience_AUDIENCE_PARTNER
	if _, err := e.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: narrowed})); err != nil {
		t.Fatal(err)
	}
	// The edge knows once its streams refuse the consumers' keys.
	testutil.Eventually(t, 10*time.Second, func() bool { return e.keyStreamStatus(t, partnerKey, e.invoice) == http.StatusForbidden }, "the edge sees the withdrawn grant")
	testutil.Eventually(t, 10*time.Second, func() bool { return e.keyStreamStatus(t, outsiderKey, e.invoice) == http.StatusNotFound }, "the edge sees the narrowed audience")
	time.Sleep(300 * time.Millisecond) // a request in flight at the change finishes
	orderedBefore, unorderedBefore, deletedBefore, unseenBefore := len(ordered.got()), len(unordered.got()), len(deleted.got()), len(unseen.got())

	e.publish(invoiceEvent("withdrawn", 2))
	testutil.Eventually(t, 20*time.Second, func() bool { return len(control.got()) == 2 }, "a granted endpoint still delivered to")
	time.Sleep(1500 * time.Millisecond) // fifteen retry delays
	// Nor may its application send it again by hand: the type is no longer
	// one of the endpoint's.
	_, err = e.webhooks(partnerKey).RetryDelivery(ctx, connect.NewRequest(&edgev1.RetryDeliveryRequest{SubscriptionId: freshSub.GetId(), Cursor: grantedCursor}))
	if connect.CodeOf(err) != connect.CodeNotFound || !strings.Contains(err.Error(), "it is not one of its types") {
		t.Fatalf("a manual retry after the grant was withdrawn: %v", err)
	}
	if n := len(fresh.got()); n != 1 {
		t.Fatalf("an endpoint whose grant was withdrawn got %d events: %v", n, fresh.ids())
	}
	if n := len(ordered.got()) - orderedBefore; n > 0 {
		t.Fatalf("an ordered endpoint whose grant was withdrawn was retried %d more times", n)
	}
	if n := len(unordered.got()) - unorderedBefore; n > 0 {
		t.Fatalf("an unordered endpoint whose grant was withdrawn was retried %d more times", n)
	}
	if n := len(deleted.got()) - deletedBefore; n > 0 {
		t.Fatalf("a deleted endpoint got %d more events", n)
	}
	if n := len(unseen.got()) - unseenBefore; n > 0 {
		t.Fatalf("an endpoint whose application no longer sees the type got %d more requests", n)
	}
	// The engine goes on.
	e.publish(invoiceEvent("still-on", 3))
	testutil.Eventually(t, 20*time.Second, func() bool { return len(control.got()) == 3 }, "the engine still delivers")
	time.Sleep(time.Second)
	if len(fresh.got()) != 1 || len(ordered.got()) != orderedBefore || len(unordered.got()) != unorderedBefore || len(unseen.got()) != unseenBefore {
		t.Fatalf("delivered while the grant is withdrawn: fresh %v, ordered %v, unordered %v", fresh.ids(), ordered.ids()[orderedBefore:], unordered.ids()[unorderedBefore:])
	}

	// The failing deliveries were kept pending, not lost: with the grant
	// back and the receivers healthy, they arrive.
	failing.Store(false)
	app, err = e.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: partner.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	upd = app.Msg.GetApplication()
	upd.Grants = []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}}
	if _, err := e.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: upd})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		return slices.Contains(ordered.ids()[orderedBefore:], "granted") && slices.Contains(unordered.ids()[unorderedBefore:], "granted")
	}, "the deliveries held while the grant was withdrawn arrive once it is back")
	time.Sleep(time.Second)
	t.Logf("after the grant came back: fresh %v, ordered %v, unordered %v", fresh.ids(), ordered.ids()[orderedBefore:], unordered.ids()[unorderedBefore:])
}

// An endpoint enabled again while it still fails gets its whole
// disable_after again before it is disabled anew: the failures before it
// was disabled do not count.
func TestWebhookEnabledAgainGetsAFreshDisableAfter(t *testing.T) {
	t.Setenv("HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER", "1s")
	e := startWebhooks(t)
	r := newReceiver(t, func(int, hit) int { return http.StatusInternalServerError })
	schedule := make([]time.Duration, 50)
	for i := range schedule {
		schedule[i] = 300 * time.Millisecond
	}
	const disableAfter = 2 * time.Second
	sub, _ := e.createEndpoint(t, &registryv1.WebhookChannel{Url: r.URL, DisableAfter: durationpb.New(disableAfter), RetrySchedule: short(schedule...)})
	e.publish(invoiceEvent("still-failing", 1))
	disabled := func() bool { return e.subscription(t, sub.GetId()).GetWebhook().GetDisabled() }
	testutil.Eventually(t, 20*time.Second, disabled, "disabled after failing")
	time.Sleep(500 * time.Millisecond) // requests in flight at the disabling finish
	if _, err := e.reg.UpdateSubscription(context.Background(), connect.NewRequest(&registryv1.UpdateSubscriptionRequest{
		Subscription: &registryv1.Subscription{Id: sub.GetId(), Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Disabled: false}}},
		UpdateMask:   []string{"webhook.disabled"},
	})); err != nil {
		t.Fatal(err)
	}
	enabled := time.Now()
	before := len(r.got())
	testutil.Eventually(t, 20*time.Second, disabled, "disabled again")
	if len(r.got()) == before {
		t.Fatal("disabled again without an attempt")
	}
	if gap := e.subscription(t, sub.GetId()).GetWebhook().GetDisableTime().AsTime().Sub(enabled); gap < disableAfter {
		t.Fatalf("enabled again, then disabled %v later, before its disable_after of %v", gap, disableAfter)
	}
}
