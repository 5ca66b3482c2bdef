package webhook

import (
	"context"
	"log/slog"
	"strings"
	"time"

	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/redis/go-redis/v9"
)

// settler does the bookkeeping of successful deliveries for every endpoint
// of the process, combining what arrives while a round trip is under way
// into the next one: the attempts and the usage records in one pipeline,
// then the acknowledgements in another. A delivery is acknowledged only
// once its usage record is written (a crash in between delivers it again,
// and the record's id counts it once), so counting stays exactly once and
// delivery at least once, at a few round trips per batch instead of three
// per delivery.
type settler struct {
	rdb redis.UniversalClient
	mgr *subscription.Manager
	log *slog.Logger
	in  chan *settlement
}

// settlement is one successful delivery to settle.
type settlement struct {
	subID, ackID string
	attempt      *edgev1.Attempt
	usage        []*meteringv1.UsageRecord
	done         chan error // nil once counted; the ack's own failure is only logged
}

const (
	settleWorkers = 4   // round trips under way at once
	settleBatch   = 512 // deliveries per round trip, at most
)

func newSettler(rdb redis.UniversalClient, mgr *subscription.Manager, log *slog.Logger) *settler {
	return &settler{rdb: rdb, mgr: mgr, log: log, in: make(chan *settlement, settleBatch*settleWorkers)}
}

// run settles until ctx ends.
func (s *settler) run(ctx context.Context) {
	_ = recordScript.Load(ctx, s.rdb).Err() // pipelines send EVALSHA
	for range settleWorkers {
		go s.work(ctx)
	}
}

func (s *settler) work(ctx context.Context) {
	batch := make([]*settlement, 0, settleBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case st := <-s.in:
			batch = append(batch[:0], st)
		}
	fill:
		for len(batch) < settleBatch {
			select {
			case st := <-s.in:
				batch = append(batch, st)
			default:
				break fill
			}
		}
		s.flush(context.WithoutCancel(ctx), batch)
	}
}

// settle records, counts and acknowledges one successful delivery, with
// others. It returns nil once the delivery is counted, or why it is not
// (then it stays pending and comes again).
func (s *settler) settle(ctx context.Context, st *settlement) error {
	st.done = make(chan error, 1)
	select {
	case s.in <- st:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued, the outcome always comes: flush does not depend on ctx.
	return <-st.done
}

func (s *settler) flush(ctx context.Context, batch []*settlement) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pipe := s.rdb.Pipeline()
	records := make([]*redis.Cmd, len(batch))
	counts := make([][]*redis.StringCmd, len(batch))
	errs := make([]error, len(batch))
	for i, st := range batch {
		if keys, args, err := recordArgs(st.attempt); err == nil {
			records[i] = pipe.EvalSha(ctx, recordScript.Hash(), keys, args...)
		}
		c, err := usage.AppendIn(ctx, pipe, st.usage...)
		if err != nil {
			errs[i] = err
			continue
		}
		counts[i] = c
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	acks := map[string][]string{}
	for i, st := range batch {
		if r := records[i]; r != nil {
			v, err := r.Result()
			if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
				// Redis restarted or flushed its scripts: once more, loading it.
				keys, args, _ := recordArgs(st.attempt)
				v, err = recordScript.Run(ctx, s.rdb, keys, args...).Result()
			}
			if err != nil {
				s.log.Warn("webhook attempt not recorded", "subscription", st.subID, "cursor", st.attempt.GetCursor(), "err", err)
			} else {
				recordResult(st.attempt, v)
			}
		}
		for _, c := range counts[i] {
			if errs[i] == nil {
				errs[i] = c.Err()
			}
		}
		if errs[i] == nil {
			acks[st.subID] = append(acks[st.subID], st.ackID)
		}
	}
	if len(acks) > 0 {
		if err := s.mgr.AckMany(ctx, acks); err != nil {
			// Counted, not acknowledged: they come again, and count once.
			s.log.Warn("webhook deliveries not acknowledged; they will be delivered again", "deliveries", len(batch), "err", err)
		}
	}
	for i, st := range batch {
		st.done <- errs[i]
	}
}
