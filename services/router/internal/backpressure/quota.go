package backpressure

import (
	"context"
	"fmt"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Limit is a producer's publish quota.
type Limit struct {
	EventsPerSecond int
	// Burst is how many events may be published at once; 0 means one
	// second's worth (EventsPerSecond).
	Burst int
}

// EffectiveBurst is Burst, or EventsPerSecond when Burst is 0.
func (l Limit) EffectiveBurst() int {
	if l.Burst > 0 {
		return l.Burst
	}
	return l.EventsPerSecond
}

// OverBurstError is a batch that no wait would let through: it is larger
// than the limit's burst.
type OverBurstError struct {
	Events int
	Limit  Limit
}

func (e *OverBurstError) Error() string {
	return fmt.Sprintf("batch of %d events exceeds the burst of %d", e.Events, e.Limit.EffectiveBurst())
}

// Quota holds producers to their publish limits. The count lives in Redis
// (GCRA, one key per application), so every router draws from the same
// quota and a restart forgets nothing.
type Quota struct{ limiter *redis_rate.Limiter }

// NewQuota returns a quota counted in rdb.
func NewQuota(rdb redis.Cmdable) *Quota { return &Quota{limiter: redis_rate.NewLimiter(rdb)} }

// QuotaKey is the key (before the library's "rate:" prefix) that counts an
// application's publishes. The hash tag keeps one application's count on
// one Redis Cluster slot.
func QuotaKey(appID string) string { return "herald:quota:{" + appID + "}:publish" }

// Take draws n events from appID's quota. When the quota has room it takes
// them and returns 0; when it has not it takes nothing and returns how long
// until it will. A batch larger than the burst is an *OverBurstError, with
// no Redis call. A limit without a rate limits nothing.
func (q *Quota) Take(ctx context.Context, appID string, l Limit, n int) (wait time.Duration, err error) {
	if l.EventsPerSecond <= 0 || n <= 0 {
		return 0, nil
	}
	burst := l.EffectiveBurst()
	if n > burst {
		return 0, &OverBurstError{Events: n, Limit: l}
	}
	res, err := q.limiter.AllowN(ctx, QuotaKey(appID), redis_rate.Limit{Rate: l.EventsPerSecond, Burst: burst, Period: time.Second}, n)
	if err != nil {
		return 0, fmt.Errorf("publish quota of %s: %w", appID, err)
	}
	if res.Allowed > 0 {
		return 0, nil
	}
	// The library reports -1 when there is nothing to wait for; a refusal
	// always has something to wait for, so keep the answer positive.
	return max(res.RetryAfter, time.Millisecond), nil
}
