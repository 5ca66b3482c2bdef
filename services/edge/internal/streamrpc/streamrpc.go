// Package streamrpc serves the log over HTTP/2 server streams
// (EdgeService.StreamEvents, for gRPC, gRPC-Web and Connect clients).
package streamrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/services/edge/internal/ceiling"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/heraldmesh/herald/services/edge/internal/request"
)

// eventField is StreamEventsResponse.event's field number.
const eventField = 2

// Channel is this channel's name in the ceiling and in usage.
const Channel = "grpc"

// Handler serves EdgeService.
type Handler struct {
	edgev1connect.UnimplementedEdgeServiceHandler
	Hub       *hub.Hub
	Requests  *request.Parser
	Log       *slog.Logger
	Delivered request.Delivered
	Shutdown  context.Context
	// Ceiling bounds the streams of every channel of the edge.
	Ceiling *ceiling.Ceiling
	// Buffer bounds the events queued for one client while it reads; a
	// client further behind is ended, naming its cursor (0: the hub's
	// default).
	Buffer int
}

// StreamEvents implements EdgeService.
func (h *Handler) StreamEvents(ctx context.Context, req *connect.Request[edgev1.StreamEventsRequest], stream *connect.ServerStream[edgev1.StreamEventsResponse]) error {
	sr, err := h.Requests.Parse(ctx, request.Params{Types: req.Msg.GetTypes(), Filter: req.Msg.GetFilter(), Cursor: req.Msg.GetCursor(), JSONData: req.Msg.GetJsonData()})
	if err != nil {
		return err
	}
	release, ok := h.Ceiling.Acquire(Channel)
	if !ok {
		ce := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("this edge already serves %d streams; retry later or on another replica", h.Ceiling.Max()))
		ce.Meta().Set("Retry-After", h.Ceiling.RetryAfter())
		return ce
	}
	defer release()
	ctx, stopGuard := h.Requests.Guard(ctx, sr)
	defer stopGuard()
	stop := context.AfterFunc(h.Shutdown, stopGuard)
	defer stop()
	started := false
	o := sr.Options()
	o.Buffer, o.CutWhenBehind = h.Buffer, true
	o.Started = func() error { started = true; return nil }
	var last string // the cursor to resume after
	o.StartsAfter = func(c eventlog.ID) { last = c.String() }
	o.Gap = func(g hub.Gap) error { return stream.Send(&edgev1.StreamEventsResponse{Gap: GapProto(g)}) }
	// Binary clients get each event's encoding, made once for all of
	// them, as the bytes of the event field; JSON clients the message.
	binary := !strings.Contains(req.Header().Get("Content-Type"), "json")
	var msg edgev1.StreamEventsResponse
	err = h.Hub.Stream(ctx, sr.Patterns, o, func(batch []*hub.Event) error {
		for _, ev := range batch {
			if sr.AsJSON != nil {
				ev = ev.WithJSONData(sr.AsJSON)
			}
			msg.Cursor, msg.Event = ev.ID.String(), ev.Event
			if binary {
				if field, err := ev.ProtoField(eventField); err == nil {
					msg.Event = nil
					msg.ProtoReflect().SetUnknown(field)
				}
			}
			if err := stream.Send(&msg); err != nil {
				return err
			}
			last = msg.Cursor
			if h.Delivered != nil {
				h.Delivered(ctx, ev)
			}
		}
		return nil
	})
	if ce := request.Refusal(ctx); ce != nil {
		if request.IsQuota(ce) && last != "" {
			ce.Meta().Set(request.CursorHeader, last) // where to resume once allowed again
		}
		return ce // the caller may no longer stream
	}
	if h.Shutdown.Err() != nil {
		// The server is stopping: UNAVAILABLE, which gRPC clients take as
		// "go elsewhere" (OK would read as "finished"), with the cursor to
		// resume from.
		ce := connect.NewError(connect.CodeUnavailable, errors.New("the edge is shutting down: reconnect (to another replica) and resume from the cursor"))
		if last != "" {
			ce.Meta().Set(request.CursorHeader, last)
		}
		return ce
	}
	var lagged *hub.LaggedError
	if errors.As(err, &lagged) {
		// A last message names the cursor, then the stream ends with
		// ABORTED carrying it too.
		_ = stream.Send(&edgev1.StreamEventsResponse{Lagged: &edgev1.Lagged{Cursor: lagged.Cursor.String()}})
		return request.StreamError(err)
	}
	if err != nil && ctx.Err() == nil {
		if h.Log != nil {
			h.Log.Warn("stream ended", "started", started, "err", err)
		}
		return request.StreamError(err) // no internals to the client
	}
	return err
}

// GapProto is g on the wire.
func GapProto(g hub.Gap) *edgev1.Gap {
	j := request.NewGapJSON(g)
	return &edgev1.Gap{FromCursor: j.From, ToCursor: j.To, ResumeCursor: j.Resume, Types: j.Types}
}
