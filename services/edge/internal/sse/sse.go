// Package sse serves the log as Server-Sent Events (GET /v1/stream), in the
// WHATWG EventSource model: id is the cursor, event the CloudEvents type,
// data the CloudEvent in structured JSON; Last-Event-ID resumes.
package sse

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/edge/internal/ceiling"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
)

// Delivered is told about every event written to a client.
type Delivered func(ctx context.Context, ev *hub.Event)

// Handler serves SSE streams.
type Handler struct {
	Hub       *hub.Hub
	Catalog   *catalog.Cache
	Log       *slog.Logger
	Delivered Delivered
	// Shutdown ends every stream when the server stops.
	Shutdown context.Context
	// Heartbeat is the idle interval between comment lines.
	Heartbeat time.Duration
	// Ceiling bounds the streams of every channel of the edge.
	Ceiling *ceiling.Ceiling
	// WriteTimeout drops a client that cannot take a write for this long.
	WriteTimeout time.Duration
}

// Channel is this channel's name in the ceiling and in usage.
const Channel = "sse"

// Request is a parsed stream request.
type Request struct {
	Patterns []string
	After    *eventlog.ID
	// Allow limits delivery to the types visible to the caller (nil: all).
	// It reads the caller's audience as last seen by Watch.
	Allow func(eventType string) bool

	caller   auth.Principal
	audience atomic.Int32 // registryv1.Audience
}

// ParseRequest reads the types and the resume cursor of a stream request,
// checking the caller's subscribe grants. Exact names must be registered
// and visible to the caller; patterns may match nothing yet, and deliver
// only the types visible to the caller.
func ParseRequest(ctx context.Context, cat *catalog.Cache, types []string, cursor string) (*Request, error) {
	patterns, err := eventtype.ParsePatterns(types)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	caller, _ := auth.FromContext(ctx)
	var app *registryv1.Application
	if !caller.Admin {
		var err error
		if app, err = cat.Application(ctx, caller.ApplicationID); err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("cannot load the grants of %s: %w", caller.ApplicationID, err))
		}
	}
	for _, p := range patterns {
		if app != nil && !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, p) {
			return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s has no subscribe grant covering %s", app.GetId(), p))
		}
		if err := caller.Scope.Permit(p); err != nil {
			return nil, err // a browser token's types
		}
		if strings.Contains(p, "*") {
			continue
		}
		t, err := cat.Lookup(ctx, p)
		if errors.Is(err, catalog.ErrUnknownType) || (err == nil && app != nil && !access.Visible(app.GetAudience(), t.GetVisibility())) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("event type %s is not registered", p))
		} else if err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, err)
		}
	}
	req := &Request{Patterns: patterns, caller: caller}
	if app != nil {
		req.audience.Store(int32(app.GetAudience()))
		req.Allow = func(eventType string) bool {
			t, ok := cat.Get(eventType)
			return ok && access.Visible(registryv1.Audience(req.audience.Load()), t.GetVisibility())
		}
	}
	if cursor == "" {
		return req, nil
	}
	id, err := eventlog.ParseID(cursor)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	req.After = &id
	return req, nil
}

// Watch re-checks the caller each time the catalog changes, until ctx ends:
// a revoked key ends the stream with UNAUTHENTICATED, subscribe grants that
// no longer cover a requested pattern with PERMISSION_DENIED, and a changed
// audience narrows or widens the visible types at once. It returns nil when
// ctx ends, or the reason the stream must end. One re-check per catalog
// change, none per event.
func (r *Request) Watch(ctx context.Context, cat *catalog.Cache) error {
	if r.caller.Admin || r.caller.ApplicationID == "" {
		return nil // the operator key is never revoked
	}
	for {
		updated := cat.Updated()
		if err := r.recheck(ctx, cat); err != nil {
			return err
		}
		if !cat.WaitKey(ctx, updated, r.caller.KeyID) {
			return nil
		}
	}
}

func (r *Request) recheck(ctx context.Context, cat *catalog.Cache) error {
	if r.caller.KeyID != "" && cat.KeyRevoked(r.caller.KeyID) {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("the key of this stream was revoked or has expired"))
	}
	app, err := cat.Application(ctx, r.caller.ApplicationID)
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound, connect.CodePermissionDenied:
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s no longer exists", r.caller.ApplicationID))
		}
		return nil // the registry is unreachable: keep what was granted
	}
	for _, p := range r.Patterns {
		if !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, p) {
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s no longer has a subscribe grant covering %s", app.GetId(), p))
		}
	}
	r.audience.Store(int32(app.GetAudience()))
	return nil
}

// Guard runs Watch for a stream: the returned context ends when ctx does or
// when Watch finds the caller may no longer stream (context.Cause is then
// the connect error to end with). stop ends the watch and waits for it.
func (r *Request) Guard(ctx context.Context, cat *catalog.Cache) (guarded context.Context, stop func()) {
	ctx, expired := r.caller.Scope.Deadline(ctx) // a browser token's exp
	guarded, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Watch(guarded, cat); err != nil {
			cancel(err)
		}
	}()
	return guarded, func() { cancel(nil); <-done; expired() }
}

// Refusal is the connect error that ended a guarded stream, if any.
func Refusal(guarded context.Context) *connect.Error {
	var ce *connect.Error
	if errors.As(context.Cause(guarded), &ce) {
		return ce
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		// net/http notices a client leaving only once the body is read: a
		// stream with an unread body would outlive its client. Nor is the
		// body read here: the connection closes after this answer.
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New("a stream request has no body: give types and last_event_id in the query string")))
		return
	}
	q := r.URL.Query()
	cursor := r.Header.Get("Last-Event-ID")
	if cursor == "" {
		cursor = q.Get("last_event_id")
	}
	sr, err := ParseRequest(r.Context(), h.Catalog, q["types"], cursor)
	if err != nil {
		// The rule every RPC gets from service.ErrorInterceptor: a server
		// fault (the registry unreachable) is answered without its detail.
		auth.WriteError(w, r, service.ClientError(h.Log, "GET /v1/stream", err))
		return
	}
	release, ok := h.Ceiling.Acquire(Channel)
	if !ok {
		w.Header().Set("Retry-After", h.Ceiling.RetryAfter())
		auth.WriteError(w, r, connect.NewError(connect.CodeUnavailable, fmt.Errorf("this edge already serves %d streams; retry later or on another replica", h.Ceiling.Max())))
		return
	}
	defer release()

	ctx, stopGuard := sr.Guard(r.Context(), h.Catalog)
	defer stopGuard()
	stop := context.AfterFunc(h.Shutdown, stopGuard)
	defer stop()

	rc := http.NewResponseController(w)
	write := func(b []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(h.WriteTimeout))
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream; charset=utf-8")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")

	started := false
	var buf []byte
	err = h.Hub.Stream(ctx, sr.Patterns, hub.Options{
		After:     sr.After,
		Allow:     sr.Allow,
		Interval:  h.Heartbeat,
		Heartbeat: func() error { return write([]byte(": heartbeat\n\n")) },
		Started: func() error {
			started = true
			w.WriteHeader(http.StatusOK)
			return write([]byte("retry: 2000\n: connected\n\n"))
		},
	}, func(ev *hub.Event) error {
		if !sr.caller.Scope.Matches(ev.Event) {
			return nil // outside a browser token's filter
		}
		data, err := ev.JSON()
		if err != nil {
			h.Log.Error("event not renderable; skipped", "cursor", ev.ID.String(), "err", err)
			return nil
		}
		buf = buf[:0]
		buf = append(buf, "id: "...)
		buf = append(buf, ev.ID.String()...)
		buf = append(buf, "\nevent: "...)
		buf = append(buf, ev.Type...)
		buf = append(buf, "\ndata: "...)
		buf = append(buf, data...)
		buf = append(buf, "\n\n"...)
		if err := write(buf); err != nil {
			return err
		}
		if h.Delivered != nil {
			h.Delivered(r.Context(), ev)
		}
		return nil
	})
	if !started {
		if ce := Refusal(ctx); ce != nil {
			auth.WriteError(w, r, ce)
		} else if err != nil && ctx.Err() == nil {
			h.Log.Warn("stream not started", "err", err)
			auth.WriteError(w, r, StreamError(err))
		}
		return
	}
	if ce := Refusal(ctx); ce != nil {
		// The caller may no longer stream: say why, and close the response.
		_ = write([]byte(": stream ended: " + strings.ReplaceAll(ce.Message(), "\n", " ") + "\n\n"))
		return
	}
	if err != nil && ctx.Err() == nil {
		h.Log.Debug("stream ended", "err", err)
	}
}

// StreamError is the client's answer to a hub error before any event.
func StreamError(err error) error {
	var ahead *hub.CursorAheadError
	if errors.As(err, &ahead) {
		return connect.NewError(connect.CodeInvalidArgument, ahead)
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	return connect.NewError(connect.CodeUnavailable, errors.New("cannot read the log; retry later"))
}
