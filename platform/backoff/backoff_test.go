package backoff_test

import (
	"context"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/backoff"
)

func TestBackoffGrowsWithJitterAndResets(t *testing.T) {
	const initial, maxD = 10 * time.Millisecond, 80 * time.Millisecond
	b := backoff.New(backoff.Options{Initial: initial, Max: maxD})
	interval := initial
	seen := map[time.Duration]bool{}
	for i := range 20 {
		d := b.Next()
		if d < interval/2 || d > interval*3/2+time.Nanosecond {
			t.Fatalf("attempt %d: delay %v outside ±50%% of %v", i, d, interval)
		}
		seen[d] = true
		interval = min(2*interval, maxD)
	}
	if len(seen) < 5 {
		t.Errorf("delays are not jittered: %v", seen)
	}
	b.Reset()
	if d := b.Next(); d < initial/2 || d > initial*3/2+time.Nanosecond {
		t.Errorf("after Reset: delay %v, want about %v", d, initial)
	}
}

func TestDefaults(t *testing.T) {
	b := backoff.New(backoff.Options{})
	var d time.Duration
	for range 30 {
		d = b.Next()
	}
	if d < backoff.DefaultMax/2 || d > backoff.DefaultMax*3/2+time.Nanosecond {
		t.Errorf("delay at the cap: %v, want about %v", d, backoff.DefaultMax)
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if backoff.Sleep(ctx, time.Hour) {
		t.Fatal("Sleep waited out a cancelled context")
	}
	if !backoff.Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep did not report a full delay")
	}
}
