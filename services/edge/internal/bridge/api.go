package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/services/edge/internal/webhook"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// MaxReplay is the most events one ReplayBridge of a range may queue.
const MaxReplay = 100_000

// API serves BridgeService.
type API struct {
	E *Engine
}

// visible reports whether the caller may see b: the operator every bridge,
// an application its own.
func visible(ctx context.Context, b *registryv1.Bridge) bool {
	p, _ := auth.FromContext(ctx)
	return p.Admin || (p.ApplicationID != "" && p.ApplicationID == b.GetApplicationId())
}

// bridgeFor finds a bridge the caller sees by id or name; anything else is
// NOT_FOUND, saying nothing of whether it exists.
func (a *API) bridgeFor(ctx context.Context, idOrName string) (*registryv1.Bridge, error) {
	if idOrName == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("bridge is required"))
	}
	for _, b := range a.E.o.Catalog.Bridges() {
		if (b.GetId() == idOrName || b.GetName() == idOrName) && visible(ctx, b) {
			return b, nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("bridge %q not found", idOrName))
}

func unavailable(err error) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("the bridge state is unavailable; retry: %w", err))
}

// ListBridgeStatus implements BridgeService.
func (a *API) ListBridgeStatus(ctx context.Context, req *connect.Request[edgev1.ListBridgeStatusRequest]) (*connect.Response[edgev1.ListBridgeStatusResponse], error) {
	if p, _ := auth.FromContext(ctx); !p.Admin && p.ApplicationID == "" {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("missing key"))
	}
	var list []*registryv1.Bridge
	if names := req.Msg.GetBridges(); len(names) > 0 {
		if len(names) > 1000 {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("bridges lists more than 1000"))
		}
		for _, n := range names {
			b, err := a.bridgeFor(ctx, n)
			if err != nil {
				return nil, err
			}
			list = append(list, b)
		}
	} else {
		for _, b := range a.E.o.Catalog.Bridges() {
			if visible(ctx, b) {
				list = append(list, b)
			}
		}
	}
	slices.SortFunc(list, func(x, y *registryv1.Bridge) int { return strings.Compare(x.GetName(), y.GetName()) })
	out := &edgev1.ListBridgeStatusResponse{}
	for _, b := range list {
		st, err := a.E.Status(ctx, b)
		if err != nil {
			return nil, unavailable(err)
		}
		out.Statuses = append(out.Statuses, st)
	}
	return connect.NewResponse(out), nil
}

// Status tells how a bridge goes, from Redis: whoever runs it.
func (e *Engine) Status(ctx context.Context, b *registryv1.Bridge) (*edgev1.BridgeStatus, error) {
	st := &edgev1.BridgeStatus{BridgeId: b.GetId(), Name: b.GetName(), System: SystemOf(b), Disabled: b.GetDisabled(), Lag: -1}
	sink := b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK
	st.Direction = "source"
	if sink {
		st.Direction = "sink"
	}
	pipe := e.o.Redis.Pipeline()
	lease := pipe.Exists(ctx, stateKey(b.GetId(), "lease"))
	status := pipe.HGetAll(ctx, StatusKey(b.GetId()))
	var dead *redis.IntCmd
	if sink {
		dead = pipe.XLen(ctx, subscription.DeadKey(b.GetId()))
	} else {
		dead = pipe.XLen(ctx, DeadKey(b.GetId()))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	st.Running = lease.Val() == 1
	st.DeadLetters = dead.Val()
	s := status.Val()
	st.LastError = s["error"]
	if ms, err := strconv.ParseInt(s["updated"], 10, 64); err == nil {
		st.UpdateTime = timestamppb.New(time.UnixMilli(ms))
	}
	if sink {
		lag, err := e.sinkLag(ctx, b)
		if err != nil {
			return nil, err
		}
		st.Lag = lag
	} else if n, err := strconv.ParseInt(s["lag"], 10, 64); err == nil {
		st.Lag = n
	}
	return st, nil
}

// sinkLag counts the log's events a sink has not yet been given: the
// consumer group's lag on each stream of its types, plus what it holds.
// Every stream of its types counts, those its application may no longer
// receive (a withdrawn grant) too: their events wait for the grant.
func (e *Engine) sinkLag(ctx context.Context, b *registryv1.Bridge) (int64, error) {
	names, _ := e.o.Catalog.Names()
	var streams []string
	for _, name := range names {
		if !slices.ContainsFunc(b.GetSink().GetTypes(), func(p string) bool { return access.Covers(p, name) }) {
			continue
		}
		if t, ok := e.o.Catalog.Get(name); ok {
			streams = append(streams, eventlog.StreamKeys(name, t.GetPartitions())...)
		}
	}
	streams = append(streams, subscription.ReplayKey(b.GetId()))
	group := subscription.Group(b.GetId())
	var total int64
	for _, s := range streams {
		groups, err := e.o.Redis.XInfoGroups(ctx, s).Result()
		if err != nil {
			if strings.Contains(err.Error(), "no such key") {
				continue
			}
			return 0, err
		}
		for _, g := range groups {
			if g.Name == group {
				total += max(g.Lag, 0) + g.Pending
			}
		}
	}
	return total, nil
}

// ListBridgeDeadLetters implements BridgeService.
func (a *API) ListBridgeDeadLetters(ctx context.Context, req *connect.Request[edgev1.ListBridgeDeadLettersRequest]) (*connect.Response[edgev1.ListBridgeDeadLettersResponse], error) {
	b, err := a.bridgeFor(ctx, req.Msg.GetBridge())
	if err != nil {
		return nil, err
	}
	n, err := webhook.PageSize(req.Msg.GetPageSize())
	if err != nil {
		return nil, err
	}
	after := req.Msg.GetPageToken()
	if after != "" {
		if _, err := eventlog.ParseID(after); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token is not one this service gave"))
		}
	}
	out := &edgev1.ListBridgeDeadLettersResponse{}
	if b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK {
		dead, next, total, err := a.E.mgr.ListDead(ctx, b.GetId(), after, n)
		if err != nil {
			return nil, unavailable(err)
		}
		for _, d := range dead {
			out.DeadLetters = append(out.DeadLetters, &edgev1.BridgeDeadLetter{
				Id: d.ID, Reason: d.Reason, Time: timestamppb.New(d.Time), Event: d.Event, Cursor: d.Cursor, Attempts: d.Attempts,
			})
		}
		out.NextPageToken, out.Total = next, total
		return connect.NewResponse(out), nil
	}
	start := "-"
	if after != "" {
		start = "(" + after
	}
	pipe := a.E.o.Redis.Pipeline()
	rng := pipe.XRangeN(ctx, DeadKey(b.GetId()), start, "+", n+1)
	total := pipe.XLen(ctx, DeadKey(b.GetId()))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, unavailable(err)
	}
	msgs := rng.Val()
	if int64(len(msgs)) > n {
		msgs = msgs[:n]
		out.NextPageToken = msgs[n-1].ID
	}
	for _, m := range msgs {
		d := &edgev1.BridgeDeadLetter{Id: m.ID}
		d.Reason, _ = m.Values["reason"].(string)
		d.Position, _ = m.Values["position"].(string)
		if raw, ok := m.Values["raw"].(string); ok {
			d.Raw = []byte(raw)
		}
		if ms, err := strconv.ParseInt(fmt.Sprint(m.Values["time"]), 10, 64); err == nil {
			d.Time = timestamppb.New(time.UnixMilli(ms))
		}
		if ev, ok := m.Values["event"].(string); ok {
			if e, err := cloudevent.UnmarshalJSON([]byte(ev)); err == nil {
				d.Event = e
			}
		}
		out.DeadLetters = append(out.DeadLetters, d)
	}
	out.Total = total.Val()
	return connect.NewResponse(out), nil
}

// ReplayBridge implements BridgeService (operator only).
func (a *API) ReplayBridge(ctx context.Context, req *connect.Request[edgev1.ReplayBridgeRequest]) (*connect.Response[edgev1.ReplayBridgeResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	b, err := a.bridgeFor(ctx, req.Msg.GetBridge())
	if err != nil {
		return nil, err
	}
	if b.GetDirection() != registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("a source has nothing to replay: its far side keeps its records"))
	}
	var n int64
	switch sel := req.Msg.GetSelection().(type) {
	case *edgev1.ReplayBridgeRequest_FailedSince:
		if err := sel.FailedSince.CheckValid(); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("failed_since: %w", err))
		}
		if n, err = a.E.mgr.ReplayDeadSince(ctx, b.GetId(), sel.FailedSince.AsTime()); err != nil {
			return nil, unavailable(err)
		}
	case *edgev1.ReplayBridgeRequest_Range:
		after, to, err := webhook.RangeOf(sel.Range)
		if err != nil {
			return nil, err
		}
		m, err := a.E.mgr.ReplayRange(ctx, subscriptionOf(b, a.E.o.AckTimeout), after, to, MaxReplay)
		if errors.Is(err, subscription.ErrTooMany) {
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
		if err != nil {
			return nil, unavailable(err)
		}
		n = int64(m)
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("say what to replay: failed_since or range"))
	}
	return connect.NewResponse(&edgev1.ReplayBridgeResponse{Queued: n}), nil
}
