package websub

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/safehttp"
)

// Modes of hub.mode.
const (
	modeSubscribe   = "subscribe"
	modeUnsubscribe = "unsubscribe"
	modeDenied      = "denied"
)

// intent is an accepted request waiting for its verification.
type intent struct {
	mode     string
	app      string
	typ      string
	topic    string
	callback string
	secret   string // sealed
	lease    time.Duration
}

func (in intent) id() string { return subscriptionID(in.app, in.typ, in.callback) }

// enqueue hands an accepted request to the verifiers; false when they are
// too far behind (the subscriber should retry later).
func (h *Hub) enqueue(in intent) bool {
	select {
	case h.intents <- in:
		return true
	default:
		return false
	}
}

func (h *Hub) verifyLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-h.intents:
			h.verify(ctx, in)
		}
	}
}

// verify checks an intent with the subscriber and carries it out.
func (h *Hub) verify(ctx context.Context, in intent) {
	log := h.o.Log.With("subscription", in.id(), "mode", in.mode, "topic", in.topic)
	switch in.mode {
	case modeSubscribe:
		// The grant may have gone since the request was accepted: the
		// subscriber is told, as the Recommendation asks.
		if err := h.authorize(ctx, in.app, in.typ); err != nil {
			if c := connect.CodeOf(err); c == connect.CodePermissionDenied || c == connect.CodeNotFound {
				h.verifications.WithLabelValues(in.mode, "denied").Inc()
				h.deny(ctx, in, connectMessage(err))
				return
			}
			log.Warn("websub subscription not verified: the grants cannot be checked; the subscriber may retry", "err", err)
			return
		}
		// The lease counts from the verification request, as the
		// Recommendation says.
		asked := time.Now()
		if ok, why := h.confirm(ctx, in); !ok {
			h.verifications.WithLabelValues(in.mode, "refused").Inc()
			log.Info("websub subscription not confirmed by the subscriber", "why", why)
			return
		}
		// Again, for a grant withdrawn while the subscriber answered.
		if err := h.authorize(ctx, in.app, in.typ); err != nil {
			if c := connect.CodeOf(err); c == connect.CodePermissionDenied || c == connect.CodeNotFound {
				h.verifications.WithLabelValues(in.mode, "denied").Inc()
				h.deny(ctx, in, connectMessage(err))
			}
			return
		}
		now := time.Now()
		renewed, err := h.st.activate(ctx, record{
			ID: in.id(), App: in.app, Type: in.typ, Topic: in.topic, Callback: in.callback, Secret: in.secret,
			Lease: in.lease, Expires: asked.Add(in.lease),
		}, now)
		if err != nil {
			log.Warn("websub subscription not stored; the subscriber may retry", "err", err)
			return
		}
		h.verifications.WithLabelValues(in.mode, "confirmed").Inc()
		log.Info("websub subscription verified", "renewed", renewed, "lease", in.lease)
		h.poke()
	case modeUnsubscribe:
		if ok, why := h.confirm(ctx, in); !ok {
			h.verifications.WithLabelValues(in.mode, "refused").Inc()
			log.Info("websub unsubscription not confirmed by the subscriber", "why", why)
			return
		}
		if err := h.st.finish(ctx, in.id(), time.Now()); err != nil {
			log.Warn("websub subscription not removed; the subscriber may retry", "err", err)
			return
		}
		h.verifications.WithLabelValues(in.mode, "confirmed").Inc()
		log.Info("websub subscription ended by its subscriber")
		h.poke()
	}
}

// confirm sends the verification of intent: a GET to the callback with
// hub.mode, hub.topic, hub.challenge (and hub.lease_seconds), which the
// subscriber confirms by answering 2xx with the challenge as the body.
func (h *Hub) confirm(ctx context.Context, in intent) (bool, string) {
	var b [24]byte
	_, _ = rand.Read(b[:])
	challenge := base64.RawURLEncoding.EncodeToString(b[:])
	q := url.Values{"hub.mode": {in.mode}, "hub.topic": {in.topic}, "hub.challenge": {challenge}}
	if in.mode == modeSubscribe {
		q.Set("hub.lease_seconds", strconv.FormatInt(int64(in.lease/time.Second), 10))
	}
	status, body, err := h.get(ctx, in.callback, q)
	switch {
	case err != nil:
		return false, err.Error()
	case status < 200 || status > 299:
		return false, fmt.Sprintf("the callback answered %d %s", status, http.StatusText(status))
	case string(body) != challenge:
		return false, "the callback's answer is not the challenge"
	}
	return true, ""
}

// deny tells the subscriber that its subscription was refused.
func (h *Hub) deny(ctx context.Context, in intent, reason string) {
	q := url.Values{"hub.mode": {modeDenied}, "hub.topic": {in.topic}, "hub.reason": {reason}}
	if _, _, err := h.get(ctx, in.callback, q); err != nil {
		h.o.Log.Info("websub denial not delivered", "subscription", in.id(), "err", err)
	}
}

// get sends a GET with q added to the callback's own query (which is kept
// as it is) and returns the status and the start of the body.
func (h *Hub) get(ctx context.Context, callback string, q url.Values) (int, []byte, error) {
	u, err := url.Parse(callback)
	if err != nil {
		return 0, nil, errors.New("the callback cannot be requested")
	}
	if u.RawQuery != "" {
		u.RawQuery += "&" + q.Encode()
	} else {
		u.RawQuery = q.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, nil, errors.New("the callback cannot be requested")
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, nil, errors.New(describe(err, verifyTimeout))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxChallengeAns))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, body, nil
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
		return fmt.Sprintf("no response within %s", timeout)
	case strings.Contains(err.Error(), "tls:"), strings.Contains(err.Error(), "x509:"):
		return "the TLS handshake failed"
	}
	return "the request failed"
}

// connectMessage is the message of a connect error without its code.
func connectMessage(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}
