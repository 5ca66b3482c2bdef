package websub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/service"
)

const maxForm = 16 << 10

func invalid(format string, a ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, a...))
}

// authorize checks that an application may receive a type now: a
// subscribe grant covering it, and the type registered and visible to it.
func (h *Hub) authorize(ctx context.Context, appID, typ string) error {
	app, err := h.o.Catalog.Application(ctx, appID)
	if err != nil {
		if c := connect.CodeOf(err); c == connect.CodeNotFound || c == connect.CodePermissionDenied {
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s no longer exists", appID))
		}
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("cannot load the grants of %s: %w", appID, err))
	}
	if !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, typ) {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s has no subscribe grant covering %s", appID, typ))
	}
	return h.lookup(ctx, typ, app.GetAudience())
}

// lookup checks that a type is registered and visible to an audience
// (unspecified, as for the operator, sees every type).
func (h *Hub) lookup(ctx context.Context, typ string, audience registryv1.Audience) error {
	t, err := h.o.Catalog.Lookup(ctx, typ)
	if errors.Is(err, catalog.ErrUnknownType) || (err == nil && !access.Visible(audience, t.GetVisibility())) {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("event type %s is not registered", typ))
	}
	if err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	return nil
}

// topicType is the event type of a topic URL of this hub.
func (h *Hub) topicType(topic string) (string, error) {
	typ, ok := strings.CutPrefix(topic, h.o.PublicURL+TopicsPath)
	if !ok || typ == "" {
		return "", invalid("hub.topic %q is not a topic of this hub: topics are %s<event type>", clip(topic), h.o.PublicURL+TopicsPath)
	}
	if err := eventtype.ValidateName(typ); err != nil {
		return "", invalid("hub.topic %q: %v", clip(topic), err)
	}
	return typ, nil
}

// clip shortens what a client sent before it goes into a message.
func clip(s string) string {
	if len(s) <= 200 {
		return s
	}
	s = s[:200]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// caller is the application of a request: WebSub subscriptions belong to
// an application, so the operator's key cannot make them.
func caller(ctx context.Context) (string, error) {
	p, _ := auth.FromContext(ctx)
	if p.Admin || p.ApplicationID == "" {
		return "", connect.NewError(connect.CodePermissionDenied, errors.New("a WebSub subscription belongs to an application: send the application's key, not the operator's"))
	}
	return p.ApplicationID, nil
}

// ServeHub serves POST /websub: subscription and unsubscription requests
// (form-encoded hub.mode, hub.topic, hub.callback, and for subscribe
// hub.lease_seconds and hub.secret). It answers 202 Accepted and verifies
// the intent afterwards, or refuses at once with 4xx and the reason.
func (h *Hub) ServeHub(w http.ResponseWriter, r *http.Request) {
	if err := h.serveHub(w, r); err != nil {
		auth.WriteError(w, r, service.ClientError(h.o.Log, "POST "+Path, err))
	}
}

func (h *Hub) serveHub(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	app, err := caller(ctx)
	if err != nil {
		return err
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return invalid("send the request as application/x-www-form-urlencoded with hub.mode, hub.topic and hub.callback")
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		return invalid("the form cannot be read (at most %d bytes)", maxForm)
	}
	f := r.PostForm
	mode := f.Get("hub.mode")
	if mode != modeSubscribe && mode != modeUnsubscribe {
		return invalid("hub.mode must be subscribe or unsubscribe")
	}
	typ, err := h.topicType(f.Get("hub.topic"))
	if err != nil {
		return err
	}
	in := intent{mode: mode, app: app, typ: typ, topic: h.TopicURL(typ), callback: f.Get("hub.callback")}
	if err := h.checkCallback(ctx, in.callback); err != nil {
		return err
	}
	if mode == modeUnsubscribe {
		if _, ok, err := h.st.get(ctx, in.id()); err != nil {
			return err
		} else if !ok {
			return connect.NewError(connect.CodeNotFound, fmt.Errorf("application %s has no subscription to %s at that callback", app, in.topic))
		}
		return h.accept(w, in)
	}
	if err := h.authorize(ctx, app, typ); err != nil {
		return err
	}
	if in.lease, err = h.lease(f.Get("hub.lease_seconds")); err != nil {
		return err
	}
	if secret := f.Get("hub.secret"); secret != "" {
		if len(secret) >= MaxSecret {
			return invalid("hub.secret must be shorter than %d bytes", MaxSecret)
		}
		if h.o.Box == nil {
			return connect.NewError(connect.CodeFailedPrecondition, errors.New("hub.secret is not available: the operator must set HERALD_SECRET_KEY so that secrets are stored encrypted; subscribe without hub.secret, or ask the operator"))
		}
		if in.secret, err = h.o.Box.Seal([]byte(secret), secretContext(in.id())); err != nil {
			return err
		}
	}
	if err := h.capped(ctx, in); err != nil {
		return err
	}
	return h.accept(w, in)
}

// accept queues the verification and answers 202.
func (h *Hub) accept(w http.ResponseWriter, in intent) error {
	if !h.enqueue(in) {
		err := connect.NewError(connect.CodeUnavailable, errors.New("too many verifications are waiting; retry later"))
		err.Meta().Set("Retry-After", "5")
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusAccepted)
	_, _ = fmt.Fprintf(w, "accepted: the hub will verify the intent to %s with a GET to the callback\n", in.mode)
	return nil
}

// checkCallback applies the outbound policy of webhooks to a callback.
func (h *Hub) checkCallback(ctx context.Context, callback string) error {
	switch {
	case callback == "":
		return invalid("hub.callback is required")
	case len(callback) > maxCallback:
		return invalid("hub.callback is longer than %d bytes", maxCallback)
	}
	err := h.o.Policy.CheckURL(ctx, callback)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, safehttp.ErrRefused), errors.Is(err, safehttp.ErrResolve):
		return invalid("hub.callback: %v", err)
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		return fmt.Errorf("check callback: %w", err)
	}
}

// lease is the lease granted for hub.lease_seconds ("" for the default),
// at most the longest.
func (h *Hub) lease(v string) (time.Duration, error) {
	if v == "" {
		return h.o.Lease, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, invalid("hub.lease_seconds must be a whole number of seconds, at least 1")
	}
	if n > int64(h.o.MaxLease/time.Second) {
		return h.o.MaxLease, nil
	}
	return time.Duration(n) * time.Second, nil
}

// capped refuses a new subscription past the application's cap (a renewal
// always passes).
func (h *Hub) capped(ctx context.Context, in intent) error {
	subs, err := h.st.all(ctx)
	if err != nil {
		return err
	}
	if _, ok := subs[in.id()]; ok || len(subs) < h.o.MaxPerApp {
		return nil
	}
	n, err := h.st.countOf(ctx, in.app, subs)
	if err != nil {
		return err
	}
	if n >= h.o.MaxPerApp {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("application %s has %d WebSub subscriptions, the most it may have: unsubscribe some first", in.app, n))
	}
	return nil
}

// ServeTopic serves GET /v1/topics/{type}: the topic's discovery, Link
// headers naming the hub and the topic itself, and a small JSON body.
func (h *Hub) ServeTopic(w http.ResponseWriter, r *http.Request) {
	if err := h.serveTopic(w, r); err != nil {
		auth.WriteError(w, r, service.ClientError(h.o.Log, "GET "+TopicsPath+"{type}", err))
	}
}

func (h *Hub) serveTopic(w http.ResponseWriter, r *http.Request) error {
	typ := r.PathValue("type")
	if err := eventtype.ValidateName(typ); err != nil {
		return invalid("%v", err)
	}
	p, _ := auth.FromContext(r.Context())
	if p.Admin {
		if err := h.lookup(r.Context(), typ, registryv1.Audience_AUDIENCE_UNSPECIFIED); err != nil {
			return err
		}
	} else if err := h.authorize(r.Context(), p.ApplicationID, typ); err != nil {
		return err
	}
	for _, l := range h.links(typ) {
		w.Header().Add("Link", l)
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(map[string]string{"type": typ, "topic": h.TopicURL(typ), "hub": h.HubURL()})
}
