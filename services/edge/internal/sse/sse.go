// Package sse serves the log as Server-Sent Events (GET /v1/stream), in the
// WHATWG EventSource model: id is the cursor, event the CloudEvents type,
// data the CloudEvent in structured JSON; Last-Event-ID (or the
// last_event_id query parameter) resumes. Besides events it sends two
// notices: herald.gap when retention trimmed events after the resume
// cursor, and herald.lagged, last, when the client fell behind and must
// reconnect (its id is the cursor to resume after, so EventSource resumes
// there by itself).
package sse

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/edge/internal/ceiling"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/heraldmesh/herald/services/edge/internal/request"
)

// Handler serves SSE streams.
type Handler struct {
	Hub       *hub.Hub
	Requests  *request.Parser
	Log       *slog.Logger
	Delivered request.Delivered
	// Shutdown ends every stream when the server stops.
	Shutdown context.Context
	// Heartbeat is the idle interval between comment lines.
	Heartbeat time.Duration
	// Retry is the reconnection delay suggested to EventSource (retry:).
	// Default 2s.
	Retry time.Duration
	// Ceiling bounds the streams of every channel of the edge.
	Ceiling *ceiling.Ceiling
	// WriteTimeout drops a client that cannot take a write for this long.
	WriteTimeout time.Duration
	// Buffer bounds the events queued for one client while it writes; a
	// client further behind is ended with herald.lagged (0: the hub's
	// default).
	Buffer int
}

// Channel is this channel's name in the ceiling and in usage.
const Channel = "sse"

// Notice event names.
const (
	GapEvent    = "herald.gap"
	LaggedEvent = "herald.lagged"
)

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
	sr, err := h.Requests.Parse(r.Context(), request.Params{Types: q["types"], Filter: q.Get("filter"), Cursor: cursor})
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

	ctx, stopGuard := h.Requests.Guard(r.Context(), sr)
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

	retry := h.Retry
	if retry <= 0 {
		retry = 2 * time.Second
	}
	started := false
	var buf []byte
	o := sr.Options()
	o.Interval, o.Buffer, o.CutWhenBehind = h.Heartbeat, h.Buffer, true
	o.Heartbeat = func() error { return write([]byte(": heartbeat\n\n")) }
	o.Started = func() error {
		started = true
		w.WriteHeader(http.StatusOK)
		return write([]byte("retry: " + strconv.FormatInt(retry.Milliseconds(), 10) + "\n: connected\n\n"))
	}
	o.Gap = func(g hub.Gap) error {
		data, _ := json.Marshal(request.NewGapJSON(g))
		return write(notice(nil, GapEvent, "", data))
	}
	err = h.Hub.Stream(ctx, sr.Patterns, o, func(batch []*hub.Event) error {
		// One write and one flush for every event queued meanwhile; each
		// event's frame is rendered once for every client.
		buf = buf[:0]
		n := 0
		for _, ev := range batch {
			frame, err := ev.SSE()
			if err != nil {
				h.Log.Error("event not renderable; skipped", "cursor", ev.ID.String(), "err", err)
				continue
			}
			buf = append(buf, frame...)
			batch[n] = ev
			n++
		}
		if n == 0 {
			return nil
		}
		if err := write(buf); err != nil {
			return err
		}
		if cap(buf) > 64<<10 {
			buf = nil // a burst does not stay with an idle client
		}
		if h.Delivered != nil {
			for _, ev := range batch[:n] {
				h.Delivered(r.Context(), ev)
			}
		}
		return nil
	})
	if !started {
		if ce := request.Refusal(ctx); ce != nil {
			auth.WriteError(w, r, ce)
		} else if err != nil && ctx.Err() == nil {
			h.Log.Warn("stream not started", "err", err)
			auth.WriteError(w, r, request.StreamError(err))
		}
		return
	}
	if ce := request.Refusal(ctx); ce != nil {
		// The caller may no longer stream: say why, and close the response.
		_ = write([]byte(": stream ended: " + strings.ReplaceAll(ce.Message(), "\n", " ") + "\n\n"))
		return
	}
	var lagged *hub.LaggedError
	if errors.As(err, &lagged) {
		// The last word: the cursor to resume after, as the id, so that
		// EventSource reconnects from there.
		c := lagged.Cursor.String()
		data, _ := json.Marshal(map[string]string{"cursor": c, "reason": lagged.Error()})
		_ = write(notice(nil, LaggedEvent, c, data))
		return
	}
	if err != nil && ctx.Err() == nil {
		h.Log.Debug("stream ended", "err", err)
	}
}

// notice appends one SSE message of the given event name to b.
func notice(b []byte, event, id string, data []byte) []byte {
	if id != "" {
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, '\n')
	}
	b = append(b, "event: "...)
	b = append(b, event...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}
