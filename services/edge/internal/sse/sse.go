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
	// Heartbeat is the idle interval between comment lines. Default 15s.
	Heartbeat time.Duration
	// MaxStreams bounds concurrent streams. Default 10000.
	MaxStreams int64
	// WriteTimeout drops a client that cannot take a write for this long. Default 30s.
	WriteTimeout time.Duration

	active atomic.Int64
}

// Active is the number of open streams.
func (h *Handler) Active() int64 { return h.active.Load() }

// Request is a parsed stream request.
type Request struct {
	Patterns []string
	After    *eventlog.ID
	// Allow limits delivery to the types visible to the caller (nil: all).
	Allow func(eventType string) bool
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
	req := &Request{Patterns: patterns}
	if app != nil {
		audience := app.GetAudience()
		req.Allow = func(eventType string) bool {
			t, ok := cat.Get(eventType)
			return ok && access.Visible(audience, t.GetVisibility())
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

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	cursor := r.Header.Get("Last-Event-ID")
	if cursor == "" {
		cursor = q.Get("last_event_id")
	}
	sr, err := ParseRequest(r.Context(), h.Catalog, q["types"], cursor)
	if err != nil {
		auth.WriteError(w, r, err)
		return
	}
	limit := h.MaxStreams
	if limit <= 0 {
		limit = 10000
	}
	if h.active.Add(1) > limit {
		h.active.Add(-1)
		w.Header().Set("Retry-After", "5")
		auth.WriteError(w, r, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("this edge already serves %d streams; retry later or on another replica", limit)))
		return
	}
	defer h.active.Add(-1)

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(h.Shutdown, cancel)
	defer stop()

	rc := http.NewResponseController(w)
	writeTimeout := h.WriteTimeout
	if writeTimeout <= 0 {
		writeTimeout = 30 * time.Second
	}
	write := func(b []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	heartbeat := h.Heartbeat
	if heartbeat <= 0 {
		heartbeat = 15 * time.Second
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream; charset=utf-8")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")

	var buf []byte
	err = h.Hub.Stream(ctx, sr.Patterns, hub.Options{
		After:     sr.After,
		Allow:     sr.Allow,
		Interval:  heartbeat,
		Heartbeat: func() error { return write([]byte(": heartbeat\n\n")) },
		Started: func() error {
			w.WriteHeader(http.StatusOK)
			return write([]byte("retry: 2000\n: connected\n\n"))
		},
	}, func(ev *hub.Event) error {
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
	if err != nil && ctx.Err() == nil {
		h.Log.Debug("stream ended", "err", err)
	}
}
