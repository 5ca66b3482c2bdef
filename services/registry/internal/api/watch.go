package api

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/services/registry/internal/store"
)

const (
	watchBatch = 256
	// watchBlock bounds each wait for new changes, and so how long a
	// stream outlives its client or the server's shutdown.
	watchBlock = time.Second
)

// Watch implements RegistryService. From revision 0 it sends the whole
// catalog at one revision (every message carries that revision), then a
// message with snapshot_complete set; otherwise the change records after
// from_revision. Then it follows the change log until the client goes away
// or the server shuts down.
func (h *Handler) Watch(ctx context.Context, req *connect.Request[registryv1.WatchRequest], stream *connect.ServerStream[registryv1.WatchResponse]) error {
	if err := auth.RequireAdmin(ctx); err != nil {
		return err
	}
	from := req.Msg.GetFromRevision()
	if from < 0 {
		return invalid("from_revision must not be negative")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(h.streams, cancel)()

	last := from
	if from == 0 {
		rev, err := h.sendSnapshot(ctx, stream)
		if err != nil {
			return h.ended(ctx, err)
		}
		last = rev
	} else {
		if err := h.store.CheckResume(ctx, from); err != nil {
			return h.ended(ctx, err)
		}
		// Send the headers now: clients wait for them before they return
		// the stream, and there may be no change for a long time.
		if err := stream.Send(nil); err != nil {
			return h.ended(ctx, err)
		}
	}
	for ctx.Err() == nil {
		changes, err := h.store.ChangesAfter(ctx, last, watchBatch, watchBlock)
		if err != nil {
			return h.ended(ctx, err)
		}
		for _, c := range changes {
			if err := stream.Send(c); err != nil {
				return h.ended(ctx, err)
			}
			last = c.GetRevision()
		}
	}
	return nil
}

// ended maps the error that ended a watch: none when the client went away
// or the server is shutting down.
func (h *Handler) ended(ctx context.Context, err error) error {
	var ahead *store.RevisionAheadError
	switch {
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, store.ErrLogTrimmed):
		return failedPrecondition("revision too old, watch from 0 (%v)", err)
	case errors.As(err, &ahead):
		return failedPrecondition("%v: watch from 0", err)
	}
	return fail(err)
}

// sendSnapshot sends every resource of the catalog, then the message that
// ends the snapshot, and returns the snapshot's revision.
func (h *Handler) sendSnapshot(ctx context.Context, stream *connect.ServerStream[registryv1.WatchResponse]) (int64, error) {
	snap, err := h.store.State(ctx)
	if err != nil {
		return 0, err
	}
	rev := snap.Revision
	var msgs []*registryv1.WatchResponse
	for _, d := range snap.Domains {
		msgs = append(msgs, &registryv1.WatchResponse{Revision: rev, Change: &registryv1.WatchResponse_Domain{Domain: d}})
	}
	for _, et := range snap.EventTypes {
		msgs = append(msgs, &registryv1.WatchResponse{Revision: rev, Change: &registryv1.WatchResponse_EventType{EventType: et}})
	}
	for _, p := range snap.Products {
		msgs = append(msgs, &registryv1.WatchResponse{Revision: rev, Change: &registryv1.WatchResponse_Product{Product: p}})
	}
	for _, a := range snap.Applications {
		msgs = append(msgs, &registryv1.WatchResponse{Revision: rev, Change: &registryv1.WatchResponse_Application{Application: a}})
	}
	for _, k := range snap.Keys {
		msgs = append(msgs, &registryv1.WatchResponse{Revision: rev, Change: &registryv1.WatchResponse_Key{Key: k}})
	}
	for _, s := range snap.Subscriptions {
		msgs = append(msgs, &registryv1.WatchResponse{Revision: rev, Change: &registryv1.WatchResponse_Subscription{Subscription: s}})
	}
	for _, b := range snap.Bridges {
		msgs = append(msgs, &registryv1.WatchResponse{Revision: rev, Change: &registryv1.WatchResponse_Bridge{Bridge: b}})
	}
	msgs = append(msgs, &registryv1.WatchResponse{Revision: rev, SnapshotComplete: true})
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			return 0, err
		}
	}
	return rev, nil
}
