package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/redis/go-redis/v9"
)

// maxDeadRaw bounds the raw payload kept with a source's dead letter.
const maxDeadRaw = 64 << 10

// deadLetterCap is about how many dead letters a source keeps.
const deadLetterCap = 100000

func (e *Engine) runSource(ctx context.Context, cfg Config, log *slog.Logger) error {
	b := cfg.Bridge
	build := e.o.Systems.Sources[SystemOf(b)]
	if build == nil {
		return fmt.Errorf("this edge has no %s source", SystemOf(b))
	}
	if b.GetSealedKey() == "" {
		return errors.New("the bridge has no key to publish with")
	}
	key, err := e.o.Box.Open(b.GetSealedKey(), KeyContext(b.GetId()))
	if err != nil {
		return fmt.Errorf("open the bridge's key: %w", err)
	}
	router := e.o.Router(string(key))
	src, err := build(cfg)
	if err != nil {
		return fmt.Errorf("open the %s source: %w", SystemOf(b), err)
	}
	defer src.Close()
	lagDone := make(chan struct{})
	lctx, stopLag := context.WithCancel(ctx)
	go func() {
		defer close(lagDone)
		e.reportLag(lctx, b.GetId(), src)
	}()
	defer func() { stopLag(); <-lagDone }()
	p := &publisher{e: e, router: router, id: b.GetId(), sys: SystemOf(b), log: log}
	return src.Run(ctx, int(max(1, b.GetSource().GetBatchSize())), p.publish)
}

// reportLag writes the source's lag to its status every few seconds.
func (e *Engine) reportLag(ctx context.Context, id string, src Source) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if n, err := src.Lag(ctx); err == nil {
			e.status(ctx, id, "lag", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// publisher publishes a source's records through the router as the
// bridge's application.
type publisher struct {
	e      *Engine
	router routerv1connect.RouterServiceClient
	id     string
	sys    string
	log    *slog.Logger
}

// refusedForGood tells the codes of a refusal that publishing again cannot
// change (bad data, no grant, unknown type): the record is dead-lettered.
// The others (quota, rate limit, unavailable) are retried.
func refusedForGood(code int32) bool {
	switch connect.Code(code) {
	case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodePermissionDenied,
		connect.CodeFailedPrecondition, connect.CodeOutOfRange, connect.CodeAlreadyExists:
		return true
	}
	return false
}

// publish is the sources' PublishFunc.
func (p *publisher) publish(ctx context.Context, recs []Record) error {
	events := make([]*eventv1.CloudEvent, 0, len(recs))
	idx := make([]int, 0, len(recs))
	for i, r := range recs {
		if r.Event == nil || r.Err != nil {
			reason := "unreadable record"
			if r.Err != nil {
				reason = r.Err.Error()
			}
			if err := p.deadLetter(ctx, r, reason); err != nil {
				return err
			}
			continue
		}
		events = append(events, r.Event)
		idx = append(idx, i)
	}
	if len(events) == 0 {
		return nil
	}
	res, err := p.router.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: events}))
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	results := res.Msg.GetResults()
	if len(results) != len(events) {
		return fmt.Errorf("publish answered %d results for %d events", len(results), len(events))
	}
	var retry error
	published := 0
	for k, r := range results {
		pe := r.GetError()
		switch {
		case pe == nil:
			published++
		case refusedForGood(pe.GetCode()):
			// The router's message names each violated rule already.
			reason := fmt.Sprintf("%s: %s", connect.Code(pe.GetCode()), pe.GetMessage())
			if err := p.deadLetter(ctx, recs[idx[k]], reason); err != nil {
				return err
			}
		default:
			retry = fmt.Errorf("publish refused an event for now: %s: %s", connect.Code(pe.GetCode()), pe.GetMessage())
		}
	}
	p.e.published.WithLabelValues(p.sys).Add(float64(published))
	// The ones stored are deduplicated when the batch comes again.
	return retry
}

// deadLetter keeps a record the mesh refused, with the reason.
func (p *publisher) deadLetter(ctx context.Context, r Record, reason string) error {
	raw := r.Raw
	if len(raw) > maxDeadRaw {
		raw = raw[:maxDeadRaw]
	}
	values := map[string]any{"reason": reason, "position": r.Position, "raw": raw, "time": time.Now().UnixMilli()}
	if r.Event != nil {
		if b, err := cloudevent.MarshalJSON(r.Event); err == nil {
			values["event"] = b
		}
	}
	err := p.e.o.Redis.XAdd(ctx, &redis.XAddArgs{Stream: DeadKey(p.id), MaxLen: deadLetterCap, Approx: true, Values: values}).Err()
	if err != nil {
		return fmt.Errorf("dead-letter a record: %w", err)
	}
	p.e.failed.WithLabelValues(p.sys).Inc()
	p.log.Info("source record dead-lettered", "position", r.Position, "reason", reason)
	return nil
}
