// Package streamrpc serves the log over HTTP/2 server streams
// (EdgeService.StreamEvents, for gRPC, gRPC-Web and Connect clients).
package streamrpc

import (
	"context"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/heraldmesh/herald/services/edge/internal/sse"
)

// Handler serves EdgeService.
type Handler struct {
	edgev1connect.UnimplementedEdgeServiceHandler
	Hub       *hub.Hub
	Catalog   *catalog.Cache
	Delivered sse.Delivered
	Shutdown  context.Context
}

// StreamEvents implements EdgeService.
func (h *Handler) StreamEvents(ctx context.Context, req *connect.Request[edgev1.StreamEventsRequest], stream *connect.ServerStream[edgev1.StreamEventsResponse]) error {
	sr, err := sse.ParseRequest(ctx, h.Catalog, req.Msg.GetTypes(), req.Msg.GetCursor())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(h.Shutdown, cancel)
	defer stop()
	err = h.Hub.Stream(ctx, sr.Patterns, hub.Options{After: sr.After, Allow: sr.Allow}, func(ev *hub.Event) error {
		if err := stream.Send(&edgev1.StreamEventsResponse{Cursor: ev.ID.String(), Event: ev.Event}); err != nil {
			return err
		}
		if h.Delivered != nil {
			h.Delivered(ctx, ev)
		}
		return nil
	})
	if h.Shutdown.Err() != nil {
		return nil // the server is stopping: end the stream cleanly
	}
	return err
}
