// Package streamrpc serves the log over HTTP/2 server streams
// (EdgeService.StreamEvents, for gRPC, gRPC-Web and Connect clients).
package streamrpc

import (
	"context"
	"fmt"
	"log/slog"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/services/edge/internal/ceiling"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/heraldmesh/herald/services/edge/internal/sse"
)

// Channel is this channel's name in the ceiling and in usage.
const Channel = "grpc"

// Handler serves EdgeService.
type Handler struct {
	edgev1connect.UnimplementedEdgeServiceHandler
	Hub       *hub.Hub
	Catalog   *catalog.Cache
	Log       *slog.Logger
	Delivered sse.Delivered
	Shutdown  context.Context
	// Ceiling bounds the streams of every channel of the edge.
	Ceiling *ceiling.Ceiling
}

// StreamEvents implements EdgeService.
func (h *Handler) StreamEvents(ctx context.Context, req *connect.Request[edgev1.StreamEventsRequest], stream *connect.ServerStream[edgev1.StreamEventsResponse]) error {
	sr, err := sse.ParseRequest(ctx, h.Catalog, req.Msg.GetTypes(), req.Msg.GetCursor())
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
	ctx, stopGuard := sr.Guard(ctx, h.Catalog)
	defer stopGuard()
	stop := context.AfterFunc(h.Shutdown, stopGuard)
	defer stop()
	started := false
	err = h.Hub.Stream(ctx, sr.Patterns, hub.Options{After: sr.After, Allow: sr.Allow, Started: func() error { started = true; return nil }}, func(ev *hub.Event) error {
		if err := stream.Send(&edgev1.StreamEventsResponse{Cursor: ev.ID.String(), Event: ev.Event}); err != nil {
			return err
		}
		if h.Delivered != nil {
			h.Delivered(ctx, ev)
		}
		return nil
	})
	if ce := sse.Refusal(ctx); ce != nil {
		return ce // the caller may no longer stream
	}
	if h.Shutdown.Err() != nil {
		return nil // the server is stopping: end the stream cleanly
	}
	if err != nil && ctx.Err() == nil {
		if h.Log != nil {
			h.Log.Warn("stream ended", "started", started, "err", err)
		}
		return sse.StreamError(err) // no internals to the client
	}
	return err
}
