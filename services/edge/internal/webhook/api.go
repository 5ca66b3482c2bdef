package webhook

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/platform/webhook"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// API limits.
const (
	defaultPage = 100
	maxPage     = 1000
	// MaxReplay is the most events one Replay of a range may queue.
	MaxReplay = 100_000
)

// API serves WebhookService and the endpoints' JWKS documents.
type API struct {
	E *Engine
}

// endpointFor loads a webhook subscription the caller owns (the operator
// owns every one); anything else is NOT_FOUND, saying nothing of whether it
// exists.
func (a *API) endpointFor(ctx context.Context, id string) (*registryv1.Subscription, error) {
	sub, err := a.subscriptionFor(ctx, id)
	if err != nil {
		return nil, err
	}
	if sub.GetWebhook() == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("subscription %s delivers over a stream, not by webhook", id))
	}
	return sub, nil
}

// PageSize checks a page_size (1 to 1000; 0 is 100). BridgeService shares it.
func PageSize(n int32) (int64, error) {
	switch {
	case n < 0 || n > maxPage:
		return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("page_size is %d; it must be between 1 and %d", n, maxPage))
	case n == 0:
		return defaultPage, nil
	}
	return int64(n), nil
}

func checkCursor(field, c string) (eventlog.ID, error) {
	id, err := eventlog.ParseID(c)
	if err != nil {
		return id, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %w", field, err))
	}
	return id, nil
}

// ListAttempts implements WebhookService.
func (a *API) ListAttempts(ctx context.Context, req *connect.Request[edgev1.ListAttemptsRequest]) (*connect.Response[edgev1.ListAttemptsResponse], error) {
	sub, err := a.endpointFor(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	n, err := PageSize(req.Msg.GetPageSize())
	if err != nil {
		return nil, err
	}
	if c := req.Msg.GetCursor(); c != "" {
		if _, err := checkCursor("cursor", c); err != nil {
			return nil, err
		}
		all, err := a.E.st.forEvent(ctx, sub.GetId(), c)
		if err != nil {
			return nil, unavailable(err)
		}
		slices.Reverse(all)
		skip := 0
		if t := req.Msg.GetPageToken(); t != "" {
			if skip, err = strconv.Atoi(t); err != nil || skip < 0 {
				return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token is not one this API gave"))
			}
		}
		all = all[min(skip, len(all)):]
		next := ""
		if int64(len(all)) > n {
			all = all[:n]
			next = strconv.Itoa(skip + int(n))
		}
		return connect.NewResponse(&edgev1.ListAttemptsResponse{Attempts: all, NextPageToken: next}), nil
	}
	before := req.Msg.GetPageToken()
	if before != "" {
		if _, err := eventlog.ParseID(before); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token is not one this API gave"))
		}
	}
	out, next, err := a.E.st.page(ctx, sub.GetId(), before, n)
	if err != nil {
		return nil, unavailable(err)
	}
	return connect.NewResponse(&edgev1.ListAttemptsResponse{Attempts: out, NextPageToken: next}), nil
}

// ListWebhookDeadLetters implements WebhookService.
func (a *API) ListWebhookDeadLetters(ctx context.Context, req *connect.Request[edgev1.ListWebhookDeadLettersRequest]) (*connect.Response[edgev1.ListWebhookDeadLettersResponse], error) {
	sub, err := a.endpointFor(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	n, err := PageSize(req.Msg.GetPageSize())
	if err != nil {
		return nil, err
	}
	after := req.Msg.GetPageToken()
	if after != "" {
		if _, err := eventlog.ParseID(after); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token is not one this API gave"))
		}
	}
	dead, next, total, err := a.E.mgr.ListDead(ctx, sub.GetId(), after, n)
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]*edgev1.WebhookDeadLetter, 0, len(dead))
	for _, d := range dead {
		attempts, err := a.E.st.forEvent(ctx, sub.GetId(), d.Cursor)
		if err != nil {
			return nil, unavailable(err)
		}
		out = append(out, &edgev1.WebhookDeadLetter{
			Id: d.ID, Cursor: d.Cursor, Event: d.Event, Reason: d.Reason, Time: timestamp(d.Time), Attempts: attempts,
		})
	}
	return connect.NewResponse(&edgev1.ListWebhookDeadLettersResponse{DeadLetters: out, NextPageToken: next, Total: total}), nil
}

// RetryDelivery implements WebhookService.
func (a *API) RetryDelivery(ctx context.Context, req *connect.Request[edgev1.RetryDeliveryRequest]) (*connect.Response[edgev1.RetryDeliveryResponse], error) {
	sub, err := a.endpointFor(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	if _, err := checkCursor("cursor", req.Msg.GetCursor()); err != nil {
		return nil, err
	}
	ev, producer, err := a.find(ctx, sub, req.Msg.GetCursor())
	if err != nil {
		return nil, err
	}
	ep := endpointOf(sub, a.E.o.Box)
	o, att, _ := a.E.attempt(ctx, ep, req.Msg.GetCursor(), ev, edgev1.AttemptTrigger_ATTEMPT_TRIGGER_MANUAL)
	d := a.E.usageOf(ctx, ep, job{cursor: req.Msg.GetCursor(), ev: ev, producer: producer, test: eventlog.IsTest(req.Msg.GetCursor())}, max(att.GetNumber(), 1))
	if o.success {
		if err := usage.Append(ctx, a.E.o.Redis, d.Records(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, time.Now())...); err != nil {
			a.E.o.Log.Warn("manual webhook delivery not counted", "subscription", sub.GetId(), "err", err)
		}
	} else {
		a.E.countFailure(ctx, d)
	}
	return connect.NewResponse(&edgev1.RetryDeliveryResponse{Attempt: att}), nil
}

// find reads one event of the subscription's streams by cursor.
func (a *API) find(ctx context.Context, sub *registryv1.Subscription, cursor string) (*eventv1.CloudEvent, string, error) {
	if eventlog.IsTest(cursor) {
		ev, producer, found, err := a.E.mgr.FindTest(ctx, sub.GetId(), cursor)
		if err != nil {
			return nil, "", unavailable(err)
		}
		if !found {
			return nil, "", connect.NewError(connect.CodeNotFound, fmt.Errorf("no test event of subscription %s at cursor %s: test events are kept %v", sub.GetId(), cursor, subscription.TestTTL))
		}
		return ev, producer, nil
	}
	streams, err := a.E.mgr.Streams(ctx, sub)
	if err != nil {
		return nil, "", unavailable(err)
	}
	for _, st := range streams {
		if st == subscription.ReplayKey(sub.GetId()) {
			continue
		}
		msgs, err := a.E.o.Redis.XRangeN(ctx, st, cursor, cursor, 1).Result()
		if err != nil {
			return nil, "", unavailable(err)
		}
		if len(msgs) == 1 {
			raw, _ := msgs[0].Values[eventlog.FieldEvent].(string)
			producer, _ := msgs[0].Values[eventlog.FieldApp].(string)
			ev := new(eventv1.CloudEvent)
			if err := proto.Unmarshal([]byte(raw), ev); err != nil {
				return nil, "", connect.NewError(connect.CodeDataLoss, fmt.Errorf("the event at %s does not decode", cursor))
			}
			return ev, producer, nil
		}
	}
	return nil, "", connect.NewError(connect.CodeNotFound, fmt.Errorf("no event of subscription %s at cursor %s: it is not one of its types, or retention has trimmed it", sub.GetId(), cursor))
}

// Replay implements WebhookService.
func (a *API) Replay(ctx context.Context, req *connect.Request[edgev1.ReplayRequest]) (*connect.Response[edgev1.ReplayResponse], error) {
	sub, err := a.endpointFor(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	var n int64
	switch sel := req.Msg.GetSelection().(type) {
	case *edgev1.ReplayRequest_Cursor:
		id, err := checkCursor("cursor", sel.Cursor)
		if err != nil {
			return nil, err
		}
		if _, _, err := a.find(ctx, sub, sel.Cursor); err != nil {
			return nil, err
		}
		if eventlog.IsTest(sel.Cursor) {
			if _, err := a.E.mgr.ReplayTest(ctx, sub, sel.Cursor); err != nil {
				return nil, unavailable(err)
			}
			return connect.NewResponse(&edgev1.ReplayResponse{Queued: 1}), nil
		}
		m, err := a.E.mgr.ReplayRange(ctx, sub, justBefore(id), id.String(), 1)
		if err != nil {
			return nil, unavailable(err)
		}
		n = int64(m)
	case *edgev1.ReplayRequest_FailedSince:
		if err := sel.FailedSince.CheckValid(); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("failed_since: %w", err))
		}
		if n, err = a.E.mgr.ReplayDeadSince(ctx, sub.GetId(), sel.FailedSince.AsTime()); err != nil {
			return nil, unavailable(err)
		}
	case *edgev1.ReplayRequest_Range:
		after, to, err := RangeOf(sel.Range)
		if err != nil {
			return nil, err
		}
		m, err := a.E.mgr.ReplayRange(ctx, sub, after, to, MaxReplay)
		if errors.Is(err, subscription.ErrTooMany) {
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
		if err != nil {
			return nil, unavailable(err)
		}
		n = int64(m)
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("say what to replay: cursor, failed_since or range"))
	}
	return connect.NewResponse(&edgev1.ReplayResponse{Queued: int32(n)}), nil
}

// RangeOf turns a LogRange into an exclusive start and an inclusive end.
func RangeOf(r *edgev1.LogRange) (after, to string, err error) {
	switch f := r.GetFrom().(type) {
	case *edgev1.LogRange_AfterCursor:
		id, err := checkCursor("range.after_cursor", f.AfterCursor)
		if err != nil {
			return "", "", err
		}
		after = id.String()
	case *edgev1.LogRange_FromTime:
		if err := f.FromTime.CheckValid(); err != nil {
			return "", "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("range.from_time: %w", err))
		}
		after = lastIDBefore(f.FromTime.AsTime())
	default:
		return "", "", connect.NewError(connect.CodeInvalidArgument, errors.New("range needs a start: after_cursor or from_time"))
	}
	to = "+"
	switch t := r.GetTo().(type) {
	case *edgev1.LogRange_ToCursor:
		id, err := checkCursor("range.to_cursor", t.ToCursor)
		if err != nil {
			return "", "", err
		}
		to = id.String()
	case *edgev1.LogRange_ToTime:
		if err := t.ToTime.CheckValid(); err != nil {
			return "", "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("range.to_time: %w", err))
		}
		to = lastIDBefore(t.ToTime.AsTime())
	}
	if to != "+" && eventlog.MustParseID(to).Less(eventlog.MustParseID(after)) {
		return "", "", connect.NewError(connect.CodeInvalidArgument, errors.New("range ends before it starts"))
	}
	return after, to, nil
}

// lastIDBefore is the greatest stream id stamped before t.
func lastIDBefore(t time.Time) string {
	ms := t.UnixMilli()
	if ms <= 0 {
		return "0-0"
	}
	return fmt.Sprintf("%d-%d", ms-1, uint64(math.MaxUint64))
}

// justBefore is the greatest stream id before id.
func justBefore(id eventlog.ID) string {
	s := id.String()
	ms, seq, _ := strings.Cut(s, "-")
	if n, err := strconv.ParseUint(seq, 10, 64); err == nil && n > 0 {
		return ms + "-" + strconv.FormatUint(n-1, 10)
	}
	m, _ := strconv.ParseInt(ms, 10, 64)
	return lastIDBefore(time.UnixMilli(m))
}

func unavailable(err error) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("the webhook store is unavailable; retry: %w", err))
}

// JWKS serves GET /v1/webhooks/{id}/jwks.json: the Ed25519 public keys an
// endpoint's requests are signed with now, as a JSON Web Key Set. Public
// keys are not secret: this route needs no key.
func (a *API) JWKS(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	sub, err := a.E.o.Catalog.Subscription(r.Context(), id)
	keys := map[string]string{}
	if err == nil && sub.GetWebhook() != nil {
		now := time.Now()
		for _, s := range sub.GetWebhook().GetSecrets() {
			if s.GetPublicKey() == "" || (s.GetExpireTime() != nil && !now.Before(s.GetExpireTime().AsTime())) {
				continue
			}
			keys[s.GetId()] = s.GetPublicKey()
		}
	}
	if len(keys) == 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":"no Ed25519 webhook endpoint has this id"}` + "\n"))
		return
	}
	doc, err := webhook.JWKS(keys)
	if err != nil {
		http.Error(w, "the key set cannot be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(doc)
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
