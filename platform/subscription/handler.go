package subscription

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/quota"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Limits bound what callers may ask for.
type Limits struct {
	MaxSessions  int // open Subscribe streams per router (default 1000)
	MaxInFlight  int // largest window (default 10000)
	MaxIDs       int // ack ids or dead letter ids per call (default 1000)
	MaxNackDelay time.Duration
}

const (
	defaultWindow   = 100
	defaultPageSize = 100
	maxPageSize     = 1000
)

// Handler serves the subscription RPCs of RouterService.
type Handler struct {
	m        *Manager
	shutdown context.Context
	limits   Limits
	sessions chan struct{}
	quotas   *quota.Cache // see UseQuotas
}

// NewHandler returns a Handler over m. Subscribe streams end when shutdown
// does.
func NewHandler(m *Manager, shutdown context.Context, l Limits) *Handler {
	if l.MaxSessions <= 0 {
		l.MaxSessions = 1000
	}
	if l.MaxInFlight <= 0 {
		l.MaxInFlight = 10000
	}
	if l.MaxIDs <= 0 {
		l.MaxIDs = 1000
	}
	if l.MaxNackDelay <= 0 {
		l.MaxNackDelay = 7 * 24 * time.Hour
	}
	return &Handler{m: m, shutdown: shutdown, limits: l, sessions: make(chan struct{}, l.MaxSessions)}
}

// subscription loads a subscription the caller owns (the operator owns
// every one).
func (h *Handler) subscription(ctx context.Context, id string) (*registryv1.Subscription, error) {
	if id == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("subscription_id is required"))
	}
	sub, err := h.m.cat.Subscription(ctx, id)
	if errors.Is(err, catalog.ErrUnknownSubscription) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("subscription %s does not exist", id))
	}
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	if p, _ := auth.FromContext(ctx); !p.Admin && p.ApplicationID != sub.GetApplicationId() {
		// Not yours: say nothing about whether it exists.
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("subscription %s does not exist", id))
	}
	return sub, nil
}

// Subscribe implements RouterService.
func (h *Handler) Subscribe(ctx context.Context, req *connect.Request[routerv1.SubscribeRequest], stream *connect.ServerStream[routerv1.SubscribeResponse]) error {
	sub, err := h.subscription(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return err
	}
	if sub.GetStream() == nil {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("subscription %s delivers by webhook, not over a stream: create one with channel stream {} to use Subscribe", sub.GetId()))
	}
	window := int(req.Msg.GetMaxInFlight())
	switch {
	case window < 0 || window > h.limits.MaxInFlight:
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("max_in_flight is %d; it must be between 1 and %d (0 means %d)", window, h.limits.MaxInFlight, defaultWindow))
	case window == 0:
		window = defaultWindow
	}
	resume, err := resumeID(req.Msg.GetResume())
	if err != nil {
		return err
	}
	if ce := h.overQuota(ctx, sub); ce != nil {
		return ce
	}
	select {
	case h.sessions <- struct{}{}:
		defer func() { <-h.sessions }()
	default:
		err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("this router already serves %d Subscribe streams, its limit; retry later or on another router", h.limits.MaxSessions))
		err.Meta().Set("Retry-After", "1")
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(h.shutdown, func() { cancel(nil) })()
	if p, _ := auth.FromContext(ctx); !p.Admin && p.KeyID != "" {
		go h.m.watchKey(ctx, p.KeyID, cancel)
	}
	if h.quotas != nil {
		go h.watchQuota(ctx, sub, cancel)
	}
	err = h.m.serve(ctx, sub, window, resume, "", func() error { return stream.Send(nil) }, func(d *routerv1.SubscribeResponse, _ Meta) error { return stream.Send(d) })
	if q, ok := context.Cause(ctx).(quotaEnded); ok {
		return q.err
	}
	if errors.Is(context.Cause(ctx), errKeyRevoked) {
		return connect.NewError(connect.CodeUnauthenticated, errKeyRevoked)
	}
	if h.shutdown.Err() != nil {
		return connect.NewError(connect.CodeUnavailable, errors.New("the router is shutting down: reconnect (unacknowledged deliveries will be delivered again)"))
	}
	return err
}

// errKeyRevoked ends the streams of a key revoked (or expired) while they
// were open.
var errKeyRevoked = errors.New("the key of this stream was revoked or has expired: reconnect with a valid key (unacknowledged deliveries will be delivered again)")

// watchKey ends a stream (cancelling it with errKeyRevoked) once the
// catalog learns that its key was revoked or once the key expires.
func (m *Manager) watchKey(ctx context.Context, keyID string, cancel context.CancelCauseFunc) {
	for {
		updated := m.cat.Updated()
		if m.cat.KeyRevoked(keyID) {
			cancel(errKeyRevoked)
			return
		}
		if !m.cat.WaitKey(ctx, updated, keyID) {
			return
		}
	}
}

// resumeID is the group id a resume position stands for ("" for none).
func resumeID(p *routerv1.ResumePosition) (string, error) {
	switch pos := p.GetPosition().(type) {
	case *routerv1.ResumePosition_Cursor:
		id, err := eventlog.ParseID(pos.Cursor)
		if err != nil {
			return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("resume.cursor: %w", err))
		}
		if id == eventlog.Zero {
			return "0", nil
		}
		return id.String(), nil
	case *routerv1.ResumePosition_Time:
		if err := pos.Time.CheckValid(); err != nil {
			return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("resume.time: %w", err))
		}
		return idBefore(pos.Time.AsTime().UnixMilli()), nil
	}
	return "", nil
}

// refs parses ack ids.
func (h *Handler) refs(subID string, ackIDs []string) ([]ref, error) {
	switch {
	case len(ackIDs) == 0:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("ack_ids is empty"))
	case len(ackIDs) > h.limits.MaxIDs:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%d ack_ids, more than the %d allowed per call", len(ackIDs), h.limits.MaxIDs))
	}
	out := make([]ref, len(ackIDs))
	for i, s := range ackIDs {
		r, err := parseAckID(subID, s)
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("ack_ids[%d]: %w", i, err))
		}
		out[i] = r
	}
	return out, nil
}

// Ack implements RouterService.
func (h *Handler) Ack(ctx context.Context, req *connect.Request[routerv1.AckRequest]) (*connect.Response[routerv1.AckResponse], error) {
	sub, err := h.subscription(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	refs, err := h.refs(sub.GetId(), req.Msg.GetAckIds())
	if err != nil {
		return nil, err
	}
	n, err := h.m.settle(ctx, sub.GetId(), refs)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("acknowledge: %w; retry (acknowledging twice is harmless)", err))
	}
	h.m.wake(sub.GetId())
	return connect.NewResponse(&routerv1.AckResponse{Acknowledged: int32(n)}), nil
}

// Nack implements RouterService.
func (h *Handler) Nack(ctx context.Context, req *connect.Request[routerv1.NackRequest]) (*connect.Response[routerv1.NackResponse], error) {
	sub, err := h.subscription(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	refs, err := h.refs(sub.GetId(), req.Msg.GetAckIds())
	if err != nil {
		return nil, err
	}
	var delay time.Duration
	if d := req.Msg.GetDelay(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("delay: %w", err))
		}
		delay = d.AsDuration()
		if delay < 0 || delay > h.limits.MaxNackDelay {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("delay is %s; it must be between 0 and %s", delay, h.limits.MaxNackDelay))
		}
	}
	if len(req.Msg.GetReason()) > 1024 {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("reason is %d bytes, more than the 1024 allowed", len(req.Msg.GetReason())))
	}
	retrying, dead, err := h.m.nack(ctx, sub, refs, delay, req.Msg.GetReason())
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("nack: %w; retry", err))
	}
	h.m.wake(sub.GetId())
	return connect.NewResponse(&routerv1.NackResponse{Retrying: int32(retrying), DeadLettered: int32(dead)}), nil
}

// ListDeadLetters implements RouterService.
func (h *Handler) ListDeadLetters(ctx context.Context, req *connect.Request[routerv1.ListDeadLettersRequest]) (*connect.Response[routerv1.ListDeadLettersResponse], error) {
	sub, err := h.subscription(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	size := int64(req.Msg.GetPageSize())
	switch {
	case size < 0 || size > maxPageSize:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("page_size is %d; it must be between 1 and %d", size, maxPageSize))
	case size == 0:
		size = defaultPageSize
	}
	after := req.Msg.GetPageToken()
	if after != "" {
		if _, err := eventlog.ParseID(after); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("page_token %q is not one this API returned", after))
		}
	}
	letters, next, total, err := h.m.listDead(ctx, sub.GetId(), after, size)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	res := &routerv1.ListDeadLettersResponse{NextPageToken: next, Total: total}
	for _, d := range letters {
		res.DeadLetters = append(res.DeadLetters, &routerv1.DeadLetter{
			Id: d.ID, Cursor: d.Cursor, Event: d.Event, Attempts: int32(d.Attempts), Reason: d.Reason, Time: timestamppb.New(d.Time),
		})
	}
	return connect.NewResponse(res), nil
}

// deadIDsOf checks a request's dead letter selection.
func (h *Handler) deadIDsOf(ids []string, all bool) error {
	switch {
	case all && len(ids) > 0:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("give ids or all, not both"))
	case !all && len(ids) == 0:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("give the ids of the dead letters, or all"))
	case len(ids) > h.limits.MaxIDs:
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%d ids, more than the %d allowed per call", len(ids), h.limits.MaxIDs))
	}
	for i, id := range ids {
		if _, err := eventlog.ParseID(id); err != nil {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("ids[%d]: %q is not a dead letter id", i, id))
		}
	}
	return nil
}

// ReplayDeadLetters implements RouterService.
func (h *Handler) ReplayDeadLetters(ctx context.Context, req *connect.Request[routerv1.ReplayDeadLettersRequest]) (*connect.Response[routerv1.ReplayDeadLettersResponse], error) {
	sub, err := h.subscription(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	if err := h.deadIDsOf(req.Msg.GetIds(), req.Msg.GetAll()); err != nil {
		return nil, err
	}
	// The replay stream needs the group before anything lands in it.
	if err := h.m.ensure(ctx, sub, []string{ReplayKey(sub.GetId())}); err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	n, err := h.m.replay(ctx, sub.GetId(), req.Msg.GetIds(), req.Msg.GetAll())
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("replayed %d before: %w", n, err))
	}
	return connect.NewResponse(&routerv1.ReplayDeadLettersResponse{Replayed: int32(n)}), nil
}

// DeleteDeadLetters implements RouterService.
func (h *Handler) DeleteDeadLetters(ctx context.Context, req *connect.Request[routerv1.DeleteDeadLettersRequest]) (*connect.Response[routerv1.DeleteDeadLettersResponse], error) {
	sub, err := h.subscription(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	if err := h.deadIDsOf(req.Msg.GetIds(), req.Msg.GetAll()); err != nil {
		return nil, err
	}
	n, err := h.m.deleteDead(ctx, sub.GetId(), req.Msg.GetIds(), req.Msg.GetAll())
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("deleted %d before: %w", n, err))
	}
	return connect.NewResponse(&routerv1.DeleteDeadLettersResponse{Deleted: int32(n)}), nil
}
