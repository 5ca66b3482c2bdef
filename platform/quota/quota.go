// Package quota is the hot-path side of Herald's hard quotas: metering's
// enforcer writes the set of exhausted quotas to Redis, and a Cache in each
// router and edge keeps a copy in memory, so that Publish and every
// delivery ask a map, never metering, whether an application may go on.
//
// Keys (one hash tag; written by metering, read here):
//
//	herald:{quota}:blocked   hash "<metric>|a|<application>" or "<metric>|t|<tenant>"
//	                         -> when the period resets (unix ms); metric is the
//	                         UsageMetric number (1 published, 2 delivered)
//	herald:{quota}:version   counter, incremented with every change of blocked
//	herald:{quota}:changed   pub/sub channel: the new version, after each change
package quota

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/redis/go-redis/v9"
)

// Redis keys (see the package comment).
const (
	BlockedKey = "herald:{quota}:blocked"
	VersionKey = "herald:{quota}:version"
	Channel    = "herald:{quota}:changed"
)

// Scope letters of a blocked field.
const (
	ScopeApplication = "a"
	ScopeTenant      = "t"
)

// Field is the blocked hash's field of a subject (an application id or a
// tenant) for a metric.
func Field(metric meteringv1.UsageMetric, scope, subject string) string {
	return strconv.Itoa(int(metric)) + "|" + scope + "|" + subject
}

// ParseField reads a Field.
func ParseField(f string) (metric meteringv1.UsageMetric, scope, subject string, ok bool) {
	m, rest, ok1 := strings.Cut(f, "|")
	scope, subject, ok2 := strings.Cut(rest, "|")
	n, err := strconv.Atoi(m)
	if !ok1 || !ok2 || err != nil || (scope != ScopeApplication && scope != ScopeTenant) {
		return 0, "", "", false
	}
	return meteringv1.UsageMetric(n), scope, subject, true
}

// DefaultRefresh is how often a Cache reloads without a notice.
const DefaultRefresh = 250 * time.Millisecond

type entry struct {
	metric  meteringv1.UsageMetric
	scope   byte
	subject string
}

// Cache is an in-memory copy of the blocked set, kept fresh by Run. Its
// zero value blocks nothing; a nil *Cache blocks nothing either, so that
// a service without quotas needs no branch.
type Cache struct {
	rdb     redis.UniversalClient
	log     *slog.Logger
	refresh time.Duration
	now     func() time.Time

	set     atomic.Pointer[map[entry]int64]
	version atomic.Int64
	loaded  atomic.Bool

	mu      sync.Mutex
	changed chan struct{}
}

// Options configure a Cache. The zero value is ready to use.
type Options struct {
	// Refresh is how often the set is reloaded besides the change notices.
	// Default DefaultRefresh.
	Refresh time.Duration
	// Log receives failed reloads; nil discards them.
	Log *slog.Logger
}

// NewCache returns a Cache reading rdb; Run drives it.
func NewCache(rdb redis.UniversalClient, o Options) *Cache {
	if o.Refresh <= 0 {
		o.Refresh = DefaultRefresh
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{rdb: rdb, log: o.Log, refresh: o.Refresh, now: time.Now, changed: make(chan struct{})}
	c.version.Store(-1)
	return c
}

// Run follows the blocked set until ctx ends: on every change notice and
// every refresh interval. Should Redis not answer, the last set read stays
// in force.
func (c *Cache) Run(ctx context.Context) error {
	sub := c.rdb.Subscribe(ctx, Channel)
	defer sub.Close()
	notices := sub.Channel(redis.WithChannelHealthCheckInterval(10 * time.Second))
	t := time.NewTicker(c.refresh)
	defer t.Stop()
	failing := false
	for {
		err := c.Load(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			c.log.Warn("quota set not reloaded; the last one read stays in force", "err", err)
			failing = true
		case err == nil:
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-notices:
		case <-t.C:
		}
	}
}

// Load reads the blocked set now if its version changed.
func (c *Cache) Load(ctx context.Context) error {
	v, err := c.rdb.Get(ctx, VersionKey).Int64()
	if err == redis.Nil {
		v, err = 0, nil
	}
	if err != nil {
		return fmt.Errorf("read quota version: %w", err)
	}
	if c.loaded.Load() && v == c.version.Load() {
		return nil
	}
	all, err := c.rdb.HGetAll(ctx, BlockedKey).Result()
	if err != nil {
		return fmt.Errorf("read blocked quotas: %w", err)
	}
	set := make(map[entry]int64, len(all))
	for f, val := range all {
		m, scope, subject, ok := ParseField(f)
		at, err := strconv.ParseInt(val, 10, 64)
		if !ok || err != nil {
			continue
		}
		set[entry{m, scope[0], subject}] = at
	}
	c.set.Store(&set)
	c.version.Store(v)
	c.loaded.Store(true)
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	return nil
}

// Ready reports whether the set was read at least once.
func (c *Cache) Ready() bool { return c == nil || c.rdb == nil || c.loaded.Load() }

// Changed returns a channel closed at the next change of the set.
func (c *Cache) Changed() <-chan struct{} {
	if c == nil || c.rdb == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Blocked reports whether a hard quota on metric stops tenant's or app's
// events now, and how long until the period resets (at least a second).
// Either of tenant and app may be empty. It reads memory only.
func (c *Cache) Blocked(metric meteringv1.UsageMetric, tenant, app string) (retryAfter time.Duration, blocked bool) {
	until, blocked := c.Until(metric, tenant, app)
	if !blocked {
		return 0, false
	}
	return max(time.Second, until.Sub(c.now())), true
}

// Until is Blocked with the time the period resets instead of the wait.
func (c *Cache) Until(metric meteringv1.UsageMetric, tenant, app string) (time.Time, bool) {
	if c == nil {
		return time.Time{}, false
	}
	p := c.set.Load()
	if p == nil || len(*p) == 0 {
		return time.Time{}, false
	}
	now := c.now().UnixMilli()
	var until int64
	if app != "" {
		if at, ok := (*p)[entry{metric, 'a', app}]; ok && at > now {
			until = at
		}
	}
	if tenant != "" {
		if at, ok := (*p)[entry{metric, 't', tenant}]; ok && at > now && at > until {
			until = at
		}
	}
	if until == 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(until), true
}

// RetryAfter is d as a Retry-After header value: whole seconds, rounded up.
func RetryAfter(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(1, s), 10)
}
