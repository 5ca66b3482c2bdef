package billing

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/testutil"
)

func newStore(t *testing.T) *Store {
	return NewStore(testutil.RedisClient(t, testutil.Redis(t)))
}

// An application is never billed twice: its own assignment may not
// overlap its tenant's, nor a tenant's one of its applications', even
// when both are made at once.
func TestAssignRefusesDoubleBilling(t *testing.T) {
	st, ctx := newStore(t), context.Background()
	if err := st.Assign(ctx, &meteringv1.Assignment{Id: "app1-own", ApplicationId: "app1", StartMonth: "2026-01", EndMonth: "2026-06"}, "acme"); err != nil {
		t.Fatal(err)
	}
	err := st.Assign(ctx, &meteringv1.Assignment{Id: "acme-all", Tenant: "acme", StartMonth: "2026-06"}, "acme")
	if !errors.Is(err, ErrOverlap) || !strings.Contains(err.Error(), "app1") {
		t.Fatalf("a tenant assignment over an application's own: %v", err)
	}
	if err := st.Assign(ctx, &meteringv1.Assignment{Id: "acme-later", Tenant: "acme", StartMonth: "2026-07"}, "acme"); err != nil {
		t.Fatalf("a tenant assignment after the application's: %v", err)
	}
	err = st.Assign(ctx, &meteringv1.Assignment{Id: "app2-own", ApplicationId: "app2", StartMonth: "2027-01"}, "acme")
	if !errors.Is(err, ErrOverlap) || !strings.Contains(err.Error(), "tenant acme") {
		t.Fatalf("an application's own assignment inside its tenant's: %v", err)
	}
	if err := st.Assign(ctx, &meteringv1.Assignment{Id: "app3-own", ApplicationId: "app3", StartMonth: "2027-01"}, "other"); err != nil {
		t.Fatalf("another tenant's application: %v", err)
	}
	// At once: a tenant's and one of its applications' overlapping
	// assignments; one is stored.
	for round := range 5 {
		tenant := fmt.Sprintf("race%d", round)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for _, a := range []*meteringv1.Assignment{
			{Id: tenant + "-t", Tenant: tenant, StartMonth: "2026-01"},
			{Id: tenant + "-a", ApplicationId: tenant + "-app", StartMonth: "2026-01"},
		} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if st.Assign(ctx, a, tenant) == nil {
					wins.Add(1)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("round %d: %d overlapping assignments stored", round, wins.Load())
		}
	}
}

func TestAssignOverlap(t *testing.T) {
	st, ctx := newStore(t), context.Background()
	asg := func(id, start, end string) *meteringv1.Assignment {
		return &meteringv1.Assignment{Id: id, ApplicationId: "app", PlanId: "p", PlanVersion: 1, StartMonth: start, EndMonth: end}
	}
	for _, c := range []struct {
		a       *meteringv1.Assignment
		overlap bool
	}{
		{asg("a1", "2026-01", "2026-03"), false},
		{asg("a2", "2026-03", "2026-04"), true}, // end months are inclusive
		{asg("a3", "2026-04", "2026-04"), false},
		{asg("a4", "2025-01", ""), true}, // open-ended from before
		{asg("a5", "2026-05", ""), false},
		{asg("a6", "2030-01", "2030-02"), true},
	} {
		err := st.Assign(ctx, c.a, "")
		if errors.Is(err, ErrOverlap) != c.overlap || (err != nil && !errors.Is(err, ErrOverlap)) {
			t.Errorf("%s: %v, overlap %v", c.a.GetId(), err, c.overlap)
		}
	}
	// Another subject is independent.
	if err := st.Assign(ctx, &meteringv1.Assignment{Id: "t1", Tenant: "app", StartMonth: "2026-01"}, "app"); err != nil {
		t.Error(err)
	}
	// Concurrent overlapping assignments: one wins.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st.Assign(ctx, &meteringv1.Assignment{Id: "c" + string(rune('0'+i)), ApplicationId: "other", StartMonth: "2026-01"}, "") == nil {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d concurrent assignments stored", wins.Load())
	}
}

func TestCreditCapConcurrent(t *testing.T) {
	st, ctx := newStore(t), context.Background()
	inv := &meteringv1.Invoice{Id: "inv_1", SubtotalMinor: 100, TotalMinor: 100}
	if _, created, err := st.Finalize(ctx, inv, &eventv1.CloudEvent{Id: "inv_1"}); err != nil || !created {
		t.Fatal(created, err)
	}
	var ok atomic.Int32
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := st.Credit(ctx, &meteringv1.CreditNote{Id: newID("cn_"), InvoiceId: "inv_1", AmountMinor: 30})
			if err == nil {
				ok.Add(1)
			} else if !errors.Is(err, ErrCap) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got, err := st.Invoice(ctx, "inv_1")
	if err != nil || ok.Load() != 3 || got.GetCreditedMinor() != 90 || got.GetTotalMinor() != 10 || len(got.GetCreditNotes()) != 3 {
		t.Errorf("%d credits: %v %v", ok.Load(), got, err)
	}
}

type flaky struct {
	mu    sync.Mutex
	fail  int
	calls int
	got   []string
}

func (f *flaky) Publish(_ context.Context, ev *eventv1.CloudEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls <= f.fail {
		return errors.New("router down")
	}
	f.got = append(f.got, ev.GetId())
	return nil
}

func TestOutbox(t *testing.T) {
	st, ctx := newStore(t), context.Background()
	pub := &flaky{fail: 3}
	h := NewHandler(st, nil, nil, Options{Publisher: pub, OutboxInterval: 10 * time.Millisecond})
	inv := &meteringv1.Invoice{Id: "inv_x", SubtotalMinor: 5, FinalizeTime: nil}
	if _, _, err := st.Finalize(ctx, inv, finalizedEvent(inv)); err != nil {
		t.Fatal(err)
	}
	// A second Finalize of the same id stores and queues nothing.
	if got, created, err := st.Finalize(ctx, &meteringv1.Invoice{Id: "inv_x", SubtotalMinor: 99}, finalizedEvent(inv)); err != nil || created || got.GetSubtotalMinor() != 5 {
		t.Fatalf("again: %v %v %v", got, created, err)
	}
	if err := h.Drain(ctx); err == nil {
		t.Fatal("drain with the router down succeeded")
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = h.Run(rctx) }()
	testutil.Eventually(t, 5*time.Second, func() bool {
		pub.mu.Lock()
		defer pub.mu.Unlock()
		return len(pub.got) == 1
	}, "published after the router came back")
	cancel()
	<-done
	if evs, err := st.Outbox(ctx); err != nil || len(evs) != 0 || pub.got[0] != "inv_x" {
		t.Errorf("outbox %v %v, published %v", evs, err, pub.got)
	}
}

func TestMonthIn(t *testing.T) {
	for _, c := range []struct {
		zone       string
		start, end string
	}{
		{"UTC", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"},
		{"Asia/Kolkata", "2026-10-31T18:30:00Z", "2026-11-30T18:30:00Z"},
		{"Asia/Kathmandu", "2026-10-31T18:15:00Z", "2026-11-30T18:15:00Z"},
		{"America/New_York", "2026-11-01T04:00:00Z", "2026-12-01T05:00:00Z"}, // DST ends in between
	} {
		loc, err := loadZone(c.zone)
		if err != nil {
			t.Fatal(err)
		}
		start, end, err := monthIn(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), loc)
		if err != nil || start.UTC().Format(time.RFC3339) != c.start || end.UTC().Format(time.RFC3339) != c.end {
			t.Errorf("%s: %v %v %v", c.zone, start.UTC(), end.UTC(), err)
		}
	}
	// Monrovia was UTC-0:44:30 until 1972: not on a quarter hour.
	loc, _ := loadZone("Africa/Monrovia")
	if _, _, err := monthIn(time.Date(1960, 5, 1, 0, 0, 0, 0, time.UTC), loc); err == nil {
		t.Error("Monrovia 1960 accepted")
	}
}
