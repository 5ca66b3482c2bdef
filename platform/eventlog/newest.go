package eventlog

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"
)

// Newest returns the newest entry id across streams (Zero when they are
// all empty or missing) and the time on Redis's clock, the clock that
// stamps the ids: a cursor or a time after it is in the future, and a
// group set there would skip everything until then. On a Redis Cluster the
// time is the latest clock of the streams' masters (each stamps its own
// streams' ids): a cursor is in the future only once it is past all of them.
func Newest(ctx context.Context, rdb redis.Cmdable, streams []string) (ID, time.Time, error) {
	pipe := rdb.Pipeline()
	var now *redis.TimeCmd
	var clocks []*redis.Cmd
	if _, ok := rdb.(*redis.ClusterClient); ok && len(streams) > 0 {
		for _, g := range bySlot(streams) {
			clocks = append(clocks, pipe.Eval(ctx, clockScript, g[:1]))
		}
	} else {
		now = pipe.Time(ctx)
	}
	last := make([]*redis.XMessageSliceCmd, len(streams))
	for i, s := range streams {
		last[i] = pipe.XRevRangeN(ctx, s, "+", "-", 1)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Zero, time.Time{}, err
	}
	newest := Zero
	for _, c := range last {
		for _, m := range c.Val() {
			if id, err := ParseID(m.ID); err == nil && newest.Less(id) {
				newest = id
			}
		}
	}
	if now != nil {
		return newest, now.Val(), now.Err()
	}
	var latest uint64
	for _, c := range clocks {
		ms, err := clockMs(c)
		if err != nil {
			return Zero, time.Time{}, err
		}
		latest = max(latest, ms)
	}
	return newest, time.UnixMilli(int64(latest)), nil
}

// InFuture reports whether a cursor lies after now (Redis time).
func InFuture(id ID, now time.Time) bool {
	return id.Ms > uint64(now.UnixMilli())
}

// NewestString is how a newest cursor is named to clients: "0" when there
// is none.
func NewestString(id ID) string {
	if id == Zero {
		return "0"
	}
	return id.String()
}
