// Package poll serves the log by long polling (GET /v1/poll): a request
// is answered at once when events are there after its cursor, else with
// the first ones published within its wait, else with none once the wait
// is over; always with the cursor to poll after next.
//
//	GET /v1/poll?types=billing.*&cursor=<cursor>&wait=25s&max=100&filter=<CEL>
//
//	{"events": [{"cursor": "...", "event": {CloudEvent JSON}}, ...],
//	 "cursor": "<next cursor>",
//	 "gap": {"from": ..., "to": ..., "resume": ..., "types": [...]}}   (only after a trim)
package poll

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/edge/internal/ceiling"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/heraldmesh/herald/services/edge/internal/request"
)

// Channel is this channel's name in the ceiling and in usage.
const Channel = "poll"

// Bounds of a poll.
const (
	DefaultWait = 25 * time.Second
	MaxWait     = 2 * time.Minute
	DefaultMax  = 100
	MaxEvents   = 1000
)

// Handler serves long polls.
type Handler struct {
	Hub       *hub.Hub
	Requests  *request.Parser
	Log       *slog.Logger
	Delivered request.Delivered
	// Shutdown answers every waiting poll (with what it has) when the
	// server stops.
	Shutdown context.Context
	// Ceiling bounds the open requests of every channel of the edge; a
	// waiting poll counts as one.
	Ceiling *ceiling.Ceiling
}

// Response is the body of a poll's answer.
type Response struct {
	Events []Item `json:"events"`
	// Cursor is where the next poll resumes after.
	Cursor string           `json:"cursor"`
	Gap    *request.GapJSON `json:"gap,omitempty"`
}

// Item is one event with its cursor.
type Item struct {
	Cursor string          `json:"cursor"`
	Event  json.RawMessage `json:"event"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New("a poll has no body: give types and cursor in the query string")))
		return
	}
	q := r.URL.Query()
	wait, max, err := bounds(q.Get("wait"), q.Get("max"))
	if err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, err))
		return
	}
	jsonData, err := request.DataMode(q.Get("data"))
	if err != nil {
		auth.WriteError(w, r, err)
		return
	}
	pr, err := h.Requests.Parse(r.Context(), request.Params{Types: q["types"], Filter: q.Get("filter"), Cursor: q.Get("cursor"), JSONData: jsonData})
	if err != nil {
		auth.WriteError(w, r, service.ClientError(h.Log, "GET /v1/poll", err))
		return
	}
	release, ok := h.Ceiling.Acquire(Channel)
	if !ok {
		w.Header().Set("Retry-After", h.Ceiling.RetryAfter())
		auth.WriteError(w, r, connect.NewError(connect.CodeUnavailable, fmt.Errorf("this edge already serves %d streams and polls; retry later or on another replica", h.Ceiling.Max())))
		return
	}
	defer release()
	ctx, stopGuard := h.Requests.Guard(r.Context(), pr)
	defer stopGuard()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(h.Shutdown, cancel)
	defer stop()

	b, err := h.Hub.Poll(ctx, pr.Patterns, pr.Options(), max, wait)
	if ce := request.Refusal(ctx); ce != nil {
		auth.WriteError(w, r, ce) // the caller may no longer poll
		return
	}
	if err != nil && !(h.Shutdown.Err() != nil && errors.Is(err, context.Canceled)) {
		if r.Context().Err() == nil {
			h.Log.Warn("poll failed", "err", err)
			auth.WriteError(w, r, request.StreamError(err))
		}
		return
	}
	res := Response{Events: make([]Item, 0, len(b.Events)), Cursor: b.Next.String()}
	if b.Gap != nil {
		g := request.NewGapJSON(*b.Gap)
		res.Gap = &g
	}
	for _, ev := range b.Events {
		if pr.AsJSON != nil {
			ev = ev.WithJSONData(pr.AsJSON)
		}
		data, err := ev.JSON()
		if err != nil {
			h.Log.Error("event not renderable; skipped", "cursor", ev.ID.String(), "err", err)
			continue
		}
		res.Events = append(res.Events, Item{Cursor: ev.ID.String(), Event: data})
	}
	body, err := json.Marshal(res)
	if err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInternal, errors.New("internal error")))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if _, err := w.Write(body); err != nil {
		return // not delivered: the client polls again from its cursor
	}
	if h.Delivered != nil {
		for _, ev := range b.Events {
			h.Delivered(r.Context(), ev)
		}
	}
}

// bounds reads wait (a Go duration or whole seconds) and max.
func bounds(waitParam, maxParam string) (time.Duration, int, error) {
	wait, max := DefaultWait, DefaultMax
	if waitParam != "" {
		d, err := time.ParseDuration(waitParam)
		if err != nil {
			secs, serr := strconv.Atoi(waitParam)
			if serr != nil {
				return 0, 0, fmt.Errorf("wait %q is not a duration like 25s", waitParam)
			}
			d = time.Duration(secs) * time.Second
		}
		if d < 0 || d > MaxWait {
			return 0, 0, fmt.Errorf("wait %s is out of range: from 0s to %s", waitParam, MaxWait)
		}
		wait = d
	}
	if maxParam != "" {
		n, err := strconv.Atoi(maxParam)
		if err != nil || n < 1 || n > MaxEvents {
			return 0, 0, fmt.Errorf("max %q is out of range: from 1 to %d", maxParam, MaxEvents)
		}
		max = n
	}
	return wait, max, nil
}
