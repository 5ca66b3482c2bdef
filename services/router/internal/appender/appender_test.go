package appender_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/router/internal/appender"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	orderCreated = "shop.order.created"
	orderPaid    = "shop.order.paid"
	invoicePaid  = "billing.invoice.paid"
)

// newEvent returns a valid CloudEvent with JSON text data.
func newEvent(typ, source, id string) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id: id, Source: source, SpecVersion: "1.0", Type: typ,
		Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"id":%q}`, id)},
	}
}

func itemsOf(account string, evs ...*eventv1.CloudEvent) []appender.Item {
	items := make([]appender.Item, len(evs))
	for i, ev := range evs {
		items[i] = appender.Item{Event: ev, Account: account}
	}
	return items
}

// mustAppend appends and fails the test on error.
func mustAppend(t *testing.T, a *appender.Appender, items []appender.Item) []appender.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := a.Append(ctx, items)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if len(res) != len(items) {
		t.Fatalf("Append returned %d results for %d items", len(res), len(items))
	}
	return res
}

// stream returns every entry of a type's stream, decoded.
func stream(t *testing.T, rdb redis.Cmdable, typ string) []eventlog.Entry {
	t.Helper()
	key := eventlog.StreamKey(typ)
	msgs, err := rdb.XRange(context.Background(), key, "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE %s: %v", key, err)
	}
	out := make([]eventlog.Entry, len(msgs))
	for i, m := range msgs {
		if out[i], err = eventlog.Decode(key, m); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestAppendBatchOfMixedTypes(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})

	evs := []*eventv1.CloudEvent{
		newEvent(orderCreated, "/shop", "o-1"),
		newEvent(orderPaid, "/shop", "p-1"),
		{
			Id: "i-1", Source: "urn:billing", SpecVersion: "1.0", Type: invoicePaid,
			Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
				"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
				"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(time.Unix(1700000000, 42))}},
				"attempt":         {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeInteger{CeInteger: 3}},
			},
			Data: &eventv1.CloudEvent_BinaryData{BinaryData: []byte(`{"amount":5}`)},
		},
		newEvent(orderCreated, "/shop", "o-2"),
		{
			Id: "p-2", Source: "/shop", SpecVersion: "1.0", Type: orderPaid,
			Data: &eventv1.CloudEvent_ProtoData{ProtoData: must(anypb.New(timestamppb.New(time.Unix(1, 2))))},
		},
		newEvent(orderCreated, "/shop", "o-3"),
		{Id: "i-2", Source: "urn:billing", SpecVersion: "1.0", Type: invoicePaid}, // no data
	}
	res := mustAppend(t, a, itemsOf("app_1", evs...))

	// Results are in item order: group them per type, in order.
	cursors := map[string][]string{}
	want := map[string][]*eventv1.CloudEvent{}
	for i, r := range res {
		if r.Duplicate {
			t.Errorf("result %d is a duplicate", i)
		}
		typ := evs[i].GetType()
		cursors[typ] = append(cursors[typ], r.Cursor)
		want[typ] = append(want[typ], evs[i])
	}
	for typ, cs := range cursors {
		for i := 1; i < len(cs); i++ {
			if !eventlog.MustParseID(cs[i-1]).Less(eventlog.MustParseID(cs[i])) {
				t.Errorf("%s: cursors not increasing: %v", typ, cs)
			}
		}
		entries := stream(t, rdb, typ)
		if len(entries) != len(want[typ]) {
			t.Fatalf("%s: stream has %d entries, want %d", typ, len(entries), len(want[typ]))
		}
		for i, e := range entries {
			if e.ID.String() != cs[i] {
				t.Errorf("%s entry %d: id %s, result cursor %s", typ, i, e.ID, cs[i])
			}
			if e.Type != typ || e.Account != "app_1" {
				t.Errorf("%s entry %d: type %q account %q", typ, i, e.Type, e.Account)
			}
			if !proto.Equal(e.Event, want[typ][i]) {
				t.Errorf("%s entry %d:\n got %v\nwant %v", typ, i, e.Event, want[typ][i])
			}
		}
	}
}

func TestAppendDeduplicates(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})

	t.Run("same event in separate calls", func(t *testing.T) {
		ev := newEvent(orderCreated, "/shop", "sep-1")
		first := mustAppend(t, a, itemsOf("app_1", ev))[0]
		// A retry may carry other data: the first version stays.
		again := proto.Clone(ev).(*eventv1.CloudEvent)
		again.Data = &eventv1.CloudEvent_TextData{TextData: `{"changed":true}`}
		second := mustAppend(t, a, itemsOf("app_1", again))[0]
		if first.Duplicate || !second.Duplicate || second.Cursor != first.Cursor {
			t.Fatalf("first %+v, second %+v: want the second a duplicate with the first cursor", first, second)
		}
		assertStored(t, rdb, orderCreated, first.Cursor, ev)
	})

	t.Run("same (source, id) from another account", func(t *testing.T) {
		ev := newEvent(orderCreated, "/shop", "cross-1")
		first := mustAppend(t, a, itemsOf("app_1", ev))[0]
		other := mustAppend(t, a, itemsOf("app_2", ev))[0]
		if first.Duplicate || other.Duplicate || other.Cursor == first.Cursor {
			t.Fatalf("first %+v, other account %+v: want two events", first, other)
		}
		if again := mustAppend(t, a, itemsOf("app_2", ev))[0]; !again.Duplicate || again.Cursor != other.Cursor {
			t.Fatalf("the other account's retry %+v, want a duplicate of %s", again, other.Cursor)
		}
	})

	t.Run("same event twice in one batch", func(t *testing.T) {
		ev := newEvent(orderCreated, "/shop", "batch-1")
		other := newEvent(orderCreated, "/shop", "batch-2")
		res := mustAppend(t, a, itemsOf("app_1", ev, other, ev))
		if res[0].Duplicate || res[1].Duplicate || !res[2].Duplicate {
			t.Fatalf("results %+v: want only the third a duplicate", res)
		}
		if res[2].Cursor != res[0].Cursor || res[1].Cursor == res[0].Cursor {
			t.Fatalf("results %+v: want the third with the first's cursor", res)
		}
		assertStored(t, rdb, orderCreated, res[0].Cursor, ev)
	})

	t.Run("same id from another source is another event", func(t *testing.T) {
		res := mustAppend(t, a, itemsOf("app_1",
			newEvent(orderCreated, "/shop/eu", "shared-1"),
			newEvent(orderCreated, "/shop/us", "shared-1"),
		))
		if res[0].Duplicate || res[1].Duplicate || res[0].Cursor == res[1].Cursor {
			t.Fatalf("results %+v: want two distinct events", res)
		}
	})

	// Every (account, source, id) above is in the stream exactly once.
	seen := map[string]int{}
	for _, e := range stream(t, rdb, orderCreated) {
		seen[e.Event.GetSource()+" "+e.Event.GetId()]++
	}
	want := map[string]int{"/shop sep-1": 1, "/shop cross-1": 2, "/shop batch-1": 1, "/shop batch-2": 1, "/shop/eu shared-1": 1, "/shop/us shared-1": 1}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("stream holds %v, want %v", seen, want)
	}
}

// TestAppendDedupeWindow checks that the dedupe key expires after the window,
// rounded up to whole seconds: a sub-second window used to make SET EX 0 fail
// after the XADD, so every append errored and every retry stored a copy.
func TestAppendDedupeWindow(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	cases := []struct {
		window time.Duration
		maxTTL time.Duration
	}{
		{window: 0, maxTTL: 24 * time.Hour},
		{window: 90 * time.Second, maxTTL: 90 * time.Second},
		{window: 1500 * time.Millisecond, maxTTL: 2 * time.Second},
		{window: 500 * time.Millisecond, maxTTL: time.Second},
	}
	for i, c := range cases {
		t.Run(c.window.String(), func(t *testing.T) {
			a := appender.New(rdb, appender.Options{DedupeWindow: c.window})
			ev := newEvent(orderPaid, "/shop", fmt.Sprintf("window-%d", i))
			first := mustAppend(t, a, itemsOf("app_1", ev))[0]
			ttl, err := rdb.PTTL(context.Background(), appender.DedupeKey(orderPaid, "app_1", "/shop", ev.GetId())).Result()
			if err != nil {
				t.Fatal(err)
			}
			// -1 is no expiry; -2 a key already gone, which only a short window
			// on a slow machine explains.
			if ttl == -1 || ttl > c.maxTTL || ttl == -2 && c.maxTTL > 2*time.Second {
				t.Fatalf("dedupe key TTL %v, want at most %v", ttl, c.maxTTL)
			}
			if c.maxTTL < time.Minute {
				return // the key may expire any moment
			}
			if again := mustAppend(t, a, itemsOf("app_1", ev))[0]; !again.Duplicate || again.Cursor != first.Cursor {
				t.Fatalf("second append %+v, want a duplicate at %s", again, first.Cursor)
			}
		})
	}
	if n := len(stream(t, rdb, orderPaid)); n != len(cases) {
		t.Fatalf("stream has %d entries, want %d", n, len(cases))
	}
}

// assertStored checks that cursor holds ev in the stream of typ, once.
func assertStored(t *testing.T, rdb redis.Cmdable, typ, cursor string, ev *eventv1.CloudEvent) {
	t.Helper()
	n := 0
	for _, e := range stream(t, rdb, typ) {
		if e.Event.GetSource() == ev.GetSource() && e.Event.GetId() == ev.GetId() {
			n++
			if e.ID.String() != cursor || !proto.Equal(e.Event, ev) {
				t.Errorf("stored %s %v, want %s %v", e.ID, e.Event, cursor, ev)
			}
		}
	}
	if n != 1 {
		t.Errorf("(%s, %s) is in the stream %d times, want once", ev.GetSource(), ev.GetId(), n)
	}
}

func TestAppendConcurrentWriters(t *testing.T) {
	const writers, events, batch = 8, 200, 10
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})

	evs := make([]*eventv1.CloudEvent, events)
	for i := range evs {
		evs[i] = newEvent(orderCreated, "/shop", fmt.Sprintf("c-%03d", i))
	}
	// cursors[w][i] is what writer w got for event i.
	cursors := make([][]string, writers)
	news := make([]int, writers) // how many events each writer stored first
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		cursors[w] = make([]string, events)
		wg.Go(func() {
			// Each writer sends the events in its own order, in small batches,
			// so that the writers race on every event.
			order := rand.New(rand.NewPCG(uint64(w), 1)).Perm(events)
			for start := 0; start < events; start += batch {
				idx := order[start : start+batch]
				items := make([]appender.Item, len(idx))
				for j, i := range idx {
					items[j] = appender.Item{Event: evs[i], Account: "app_1"}
				}
				res, err := a.Append(context.Background(), items)
				if err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				for j, i := range idx {
					cursors[w][i] = res[j].Cursor
					if !res[j].Duplicate {
						news[w]++
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	for i := range events {
		for w := 1; w < writers; w++ {
			if cursors[w][i] != cursors[0][i] {
				t.Fatalf("event %d: writer %d got cursor %s, writer 0 got %s", i, w, cursors[w][i], cursors[0][i])
			}
		}
	}
	total := 0
	for _, n := range news {
		total += n
	}
	if total != events {
		t.Errorf("%d results were not duplicates, want %d (one per event)", total, events)
	}
	entries := stream(t, rdb, orderCreated)
	if len(entries) != events {
		t.Fatalf("stream has %d entries, want %d", len(entries), events)
	}
	for _, e := range entries {
		var i int
		if _, err := fmt.Sscanf(e.Event.GetId(), "c-%03d", &i); err != nil || cursors[0][i] != e.ID.String() {
			t.Errorf("entry %s holds %s, whose cursor is %s", e.ID, e.Event.GetId(), cursors[0][i])
		}
	}
}

func TestAppendRecoversFromNoScript(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})

	// A fresh Redis has no script loaded: the first Append loads it.
	e1, e2 := newEvent(orderCreated, "/shop", "ns-1"), newEvent(orderCreated, "/shop", "ns-2")
	first := mustAppend(t, a, itemsOf("app_1", e1))[0]

	for round := range 2 {
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		res := mustAppend(t, a, itemsOf("app_1", e1, e2))
		if !res[0].Duplicate || res[0].Cursor != first.Cursor {
			t.Fatalf("round %d: e1 got %+v, want a duplicate at %s", round, res[0], first.Cursor)
		}
		if res[1].Duplicate != (round > 0) {
			t.Fatalf("round %d: e2 got %+v", round, res[1])
		}
	}
	if n := len(stream(t, rdb, orderCreated)); n != 2 {
		t.Fatalf("stream has %d entries, want 2", n)
	}
}

func TestAppendSurvivesRedisCrash(t *testing.T) {
	const n, batch = 100, 10
	srv := testutil.Redis(t)
	rdb := testutil.RedisClient(t, srv)
	a := appender.New(rdb, appender.Options{})

	evs := make([]*eventv1.CloudEvent, n)
	for i := range evs {
		typ := orderCreated
		if i%3 == 0 {
			typ = orderPaid
		}
		evs[i] = newEvent(typ, "/shop", fmt.Sprintf("crash-%03d", i))
	}
	acked := make([]string, n)
	for start := 0; start < n; start += batch {
		for j, r := range mustAppend(t, a, itemsOf("app_1", evs[start:start+batch]...)) {
			acked[start+j] = r.Cursor
		}
	}

	srv.Kill() // SIGKILL: no chance to flush anything
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	// Every acknowledged event survived, exactly once, at its cursor.
	stored := map[string]eventlog.Entry{}
	for _, typ := range []string{orderCreated, orderPaid} {
		for _, e := range stream(t, rdb, typ) {
			if _, dup := stored[e.ID.String()+typ]; dup {
				t.Errorf("%s %s is in the stream twice", typ, e.ID)
			}
			stored[e.ID.String()+typ] = e
		}
	}
	if len(stored) != n {
		t.Errorf("%d entries after the restart, want %d", len(stored), n)
	}
	for i, c := range acked {
		e, ok := stored[c+evs[i].GetType()]
		if !ok {
			t.Errorf("acknowledged cursor %s of %s is lost", c, evs[i].GetId())
			continue
		}
		if !proto.Equal(e.Event, evs[i]) {
			t.Errorf("cursor %s holds %v, want %v", c, e.Event, evs[i])
		}
	}

	// The dedupe keys survived too (and the script is reloaded): retrying the
	// events returns the original cursors and stores nothing.
	res := mustAppend(t, a, itemsOf("app_1", evs...))
	for i, r := range res {
		if !r.Duplicate || r.Cursor != acked[i] {
			t.Errorf("retry of %s: got %+v, want a duplicate at %s", evs[i].GetId(), r, acked[i])
		}
	}
	if got := len(stream(t, rdb, orderCreated)) + len(stream(t, rdb, orderPaid)); got != n {
		t.Errorf("%d entries after the retry, want %d", got, n)
	}
}

// TestAppendCrashWhileWriting kills Redis while a writer appends, and has
// the writer retry each failed batch as a client would: no acknowledged
// event is lost and no event is stored twice.
func TestAppendCrashWhileWriting(t *testing.T) {
	const batch = 5
	srv := testutil.Redis(t)
	rdb := testutil.RedisClient(t, srv)
	a := appender.New(rdb, appender.Options{})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu      sync.Mutex
		acked   = map[string]string{} // event id -> cursor
		stop    = make(chan struct{})
		done    = make(chan error, 1)
		retries atomic.Int64 // failed attempts
	)
	go func() {
		for b := 0; ; b++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			evs := make([]*eventv1.CloudEvent, batch)
			for j := range evs {
				evs[j] = newEvent(orderCreated, "/shop", fmt.Sprintf("w-%04d-%d", b, j))
			}
			for {
				res, err := a.Append(ctx, itemsOf("app_1", evs...))
				if err == nil {
					mu.Lock()
					for j, r := range res {
						acked[evs[j].GetId()] = r.Cursor
					}
					mu.Unlock()
					break
				}
				if ctx.Err() != nil {
					done <- fmt.Errorf("batch %d never succeeded: %w", b, err)
					return
				}
				retries.Add(1)
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }

	testutil.Eventually(t, 30*time.Second, func() bool { return count() >= 100 }, "writer acknowledged 100 events")
	srv.Kill() // SIGKILL, as a crash would
	testutil.Eventually(t, 30*time.Second, func() bool { return retries.Load() > 0 }, "writer saw an append fail")
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	before := count()
	testutil.Eventually(t, 30*time.Second, func() bool { return count() >= before+100 }, "writer acknowledged 100 events after the restart")
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events acknowledged, %d failed attempts retried", len(acked), retries.Load())

	entries := stream(t, rdb, orderCreated)
	byID := map[string]string{}
	for _, e := range entries {
		if prev, dup := byID[e.Event.GetId()]; dup {
			t.Errorf("event %s is stored twice: %s and %s", e.Event.GetId(), prev, e.ID)
		}
		byID[e.Event.GetId()] = e.ID.String()
	}
	for id, c := range acked {
		if byID[id] != c {
			t.Errorf("acknowledged %s at %s, stream has it at %q", id, c, byID[id])
		}
	}
	if len(entries) != len(acked) {
		t.Errorf("stream has %d entries, %d were acknowledged", len(entries), len(acked))
	}
}

func TestAppendRedisDown(t *testing.T) {
	down := testutil.Redis(t)
	cases := []struct {
		name string
		addr string
	}{
		{name: "killed", addr: down.Addr()},
		{name: "nothing listening", addr: testutil.FreeAddr(t)},
	}
	down.Kill()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rdb := redis.NewClient(&redis.Options{Addr: c.addr})
			defer rdb.Close()
			a := appender.New(rdb, appender.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := a.Append(ctx, itemsOf("app_1", newEvent(orderCreated, "/shop", "down-1")))
			if err == nil {
				t.Fatalf("Append succeeded with Redis down: %+v", res)
			}
			if errors.Is(err, appender.ErrOutOfMemory) {
				t.Fatalf("Redis down reported as out of memory: %v", err)
			}
			if res != nil {
				t.Errorf("results %+v returned with an error", res)
			}
		})
	}

	t.Run("context ends", func(t *testing.T) {
		rdb := testutil.RedisClient(t, testutil.Redis(t))
		a := appender.New(rdb, appender.Options{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := a.Append(ctx, itemsOf("app_1", newEvent(orderCreated, "/shop", "ctx-1"))); !errors.Is(err, context.Canceled) {
			t.Fatalf("Append with a cancelled context: %v, want context.Canceled", err)
		}
	})
}

func TestAppendOutOfMemory(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})

	stored := newEvent(orderCreated, "/shop", "oom-0")
	first := mustAppend(t, a, itemsOf("app_1", stored))[0]

	for _, kv := range [][2]string{{"maxmemory-policy", "noeviction"}, {"maxmemory", "1mb"}} {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	big := strings.Repeat("x", 64<<10)
	full := false
	for i := 0; i < 1000 && !full; i++ {
		err := rdb.Set(ctx, fmt.Sprintf("filler:%d", i), big, 0).Err()
		if err != nil && !strings.HasPrefix(err.Error(), "OOM") {
			t.Fatalf("SET: %v", err)
		}
		full = err != nil
	}
	if !full {
		t.Fatal("Redis never refused a write with maxmemory 1mb")
	}

	_, err := a.Append(ctx, itemsOf("app_1", newEvent(orderCreated, "/shop", "oom-1")))
	if !errors.Is(err, appender.ErrOutOfMemory) {
		t.Fatalf("Append on a full Redis: %v, want ErrOutOfMemory", err)
	}
	// A retry of an event stored before needs no memory: it still answers.
	if res := mustAppend(t, a, itemsOf("app_1", stored)); !res[0].Duplicate || res[0].Cursor != first.Cursor {
		t.Fatalf("retry on a full Redis: %+v, want a duplicate at %s", res[0], first.Cursor)
	}
	if n := len(stream(t, rdb, orderCreated)); n != 1 {
		t.Fatalf("stream has %d entries, want 1: the refused event must not be stored", n)
	}

	// Once memory is available again, appends succeed.
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if res := mustAppend(t, a, itemsOf("app_1", newEvent(orderCreated, "/shop", "oom-1"))); res[0].Duplicate {
		t.Fatalf("append after OOM: %+v", res[0])
	}
}

func TestAppendEmpty(t *testing.T) {
	a := appender.New(redis.NewClient(&redis.Options{Addr: testutil.FreeAddr(t)}), appender.Options{})
	res, err := a.Append(context.Background(), nil)
	if err != nil || res != nil {
		t.Fatalf("Append(nil) = %v, %v; want nothing, and no round trip", res, err)
	}
}

func TestDedupeKeyShardsWithStream(t *testing.T) {
	key := appender.DedupeKey(orderCreated, "app_1", "/shop", "1")
	if !strings.HasPrefix(key, "herald:dedupe:{"+orderCreated+"}:") || !strings.Contains(eventlog.StreamKey(orderCreated), "{"+orderCreated+"}") {
		t.Fatalf("dedupe key %s and stream %s do not share a hash tag", key, eventlog.StreamKey(orderCreated))
	}
	// The NUL separator keeps (a, bc) and (ab, c) apart.
	if appender.DedupeKey(orderCreated, "app_1", "a", "bc") == appender.DedupeKey(orderCreated, "app_1", "ab", "c") ||
		appender.DedupeKey(orderCreated, "app_1", "a", "b") == appender.DedupeKey(orderCreated, "app_1a", "", "b") {
		t.Fatal("(a, bc) and (ab, c) share a dedupe key")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestAppendEnforcesRetention(t *testing.T) {
	srv := testutil.Redis(t)
	rdb := testutil.RedisClient(t, srv)
	ctx := context.Background()
	// One entry per macro node, so that approximate (~) trimming is exact.
	if err := rdb.ConfigSet(ctx, "stream-node-max-entries", "1").Err(); err != nil {
		t.Fatal(err)
	}
	a := appender.New(rdb, appender.Options{})

	t.Run("max events", func(t *testing.T) {
		const typ = "retention.count.kept"
		for i := range 20 {
			items := itemsOf("app", newEvent(typ, "//src", fmt.Sprint(i)))
			items[0].MaxLen = 5
			mustAppend(t, a, items)
		}
		got := stream(t, rdb, typ)
		if len(got) != 5 || got[4].Event.GetId() != "19" || got[0].Event.GetId() != "15" {
			t.Fatalf("kept %d entries (%v...), want the newest 5", len(got), got[0].Event.GetId())
		}
	})

	t.Run("max age", func(t *testing.T) {
		const typ = "retention.age.kept"
		key := eventlog.StreamKey(typ)
		// Entries stamped two hours and one minute ago, as if published then.
		now := time.Now().UnixMilli()
		for _, ms := range []int64{now - 2*time.Hour.Milliseconds(), now - time.Minute.Milliseconds()} {
			fields, err := eventlog.Encode(newEvent(typ, "//src", fmt.Sprint("old-", ms)), "app")
			if err != nil {
				t.Fatal(err)
			}
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, ID: fmt.Sprintf("%d-0", ms), Values: fields}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		items := itemsOf("app", newEvent(typ, "//src", "new"))
		items[0].MaxAge = time.Hour
		mustAppend(t, a, items)
		got := stream(t, rdb, typ)
		if len(got) != 2 || got[1].Event.GetId() != "new" || !strings.HasPrefix(got[0].Event.GetId(), "old-") {
			t.Fatalf("kept %d entries, want the one-minute-old and the new one", len(got))
		}
	})
}

// Cursors must be unique across streams: Redis would give two types written
// in the same millisecond the same <ms>-0, and one cursor could not tell a
// reader which of them it had seen.
func TestAppendCursorsAreUniqueAcrossStreams(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})
	types := []string{"unique.a.x", "unique.b.x", "unique.c.x"}
	seen := map[string]string{}
	last := map[string]eventlog.ID{}
	for batch := range 40 {
		var evs []*eventv1.CloudEvent
		for i := range 30 {
			evs = append(evs, newEvent(types[i%len(types)], "//src", fmt.Sprint(batch, "-", i)))
		}
		for i, r := range mustAppend(t, a, itemsOf("app", evs...)) {
			typ := evs[i].GetType()
			if other, dup := seen[r.Cursor]; dup {
				t.Fatalf("cursor %s given to %s and %s", r.Cursor, other, typ)
			}
			seen[r.Cursor] = typ
			id, err := eventlog.ParseID(r.Cursor)
			if err != nil {
				t.Fatal(err)
			}
			if !last[typ].Less(id) {
				t.Fatalf("%s: cursor %s after %s", typ, id, last[typ])
			}
			last[typ] = id
		}
	}
	// A second appender (another router) numbers the streams the same way.
	b := appender.New(rdb, appender.Options{})
	r := mustAppend(t, b, itemsOf("app", newEvent(types[1], "//src", "from-b")))
	id, _ := eventlog.ParseID(r[0].Cursor)
	if lastB := last[types[1]]; id.Seq%(1<<24) != lastB.Seq%(1<<24) {
		t.Fatalf("the second appender numbered %s %d, the first %d", types[1], id.Seq%(1<<24), lastB.Seq%(1<<24))
	}
}

func TestAppendToPartitions(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})
	const typ = "orders.order.placed"
	items := itemsOf("app", newEvent(typ, "//src", "p0"), newEvent(typ, "//src", "p2"), newEvent(typ, "//src", "p2"))
	items[1].Partition, items[2].Partition = 2, 2
	res := mustAppend(t, a, items)
	if !res[2].Duplicate || res[2].Cursor != res[1].Cursor {
		t.Fatalf("retry in partition 2 not deduplicated: %+v", res)
	}
	for p, want := range map[int]string{0: "p0", 2: "p2"} {
		msgs, err := rdb.XRange(context.Background(), eventlog.PartitionKey(typ, p), "-", "+").Result()
		if err != nil || len(msgs) != 1 {
			t.Fatalf("partition %d: %v %v", p, msgs, err)
		}
		e, err := eventlog.Decode(eventlog.PartitionKey(typ, p), msgs[0])
		if err != nil || e.Event.GetId() != want || e.Type != typ {
			t.Fatalf("partition %d holds %+v (%v)", p, e, err)
		}
	}
}

// splitPipeline runs the first pipeline it sees in two halves, calling
// between runs between them: the script cache changing midway through a
// pipeline, as when another caller loads the script.
type splitPipeline struct {
	between func()
	once    sync.Once
}

func (h *splitPipeline) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *splitPipeline) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *splitPipeline) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		split := false
		if len(cmds) >= 4 {
			h.once.Do(func() { split = true })
		}
		if !split {
			return next(ctx, cmds)
		}
		k := len(cmds) / 2
		err1 := next(ctx, cmds[:k])
		h.between()
		err2 := next(ctx, cmds[k:])
		return errors.Join(err1, err2)
	}
}

// When the script is missing for some entries of a batch and not for
// others (another caller loaded it midway), the entries that ran keep
// their answer: every new event is answered new, none duplicate, and each
// is stored once.
func TestAppendScriptLoadedMidwayAnswersNewEventsNew(t *testing.T) {
	srv := testutil.Redis(t)
	rdb, other := testutil.RedisClient(t, srv), testutil.RedisClient(t, srv)
	ctx := context.Background()
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rdb.AddHook(&splitPipeline{between: func() {
		if err := appender.New(other, appender.Options{}).Load(ctx); err != nil {
			t.Error(err)
		}
	}})
	a := appender.New(rdb, appender.Options{})
	// Six streams: one script call each, so the pipeline splits.
	var evs []*eventv1.CloudEvent
	for i := range 6 {
		evs = append(evs, newEvent(fmt.Sprintf("shop.order.kind%d", i), "//shop", fmt.Sprintf("mid-%d", i)))
	}
	for i, r := range mustAppend(t, a, itemsOf("acct", evs...)) {
		if r.Duplicate || r.Cursor == "" {
			t.Errorf("event %d: %+v, want new with a cursor", i, r)
		}
	}
	for _, ev := range evs {
		if got := len(stream(t, rdb, ev.GetType())); got != 1 {
			t.Errorf("%s: %d entries stored, want 1", ev.GetType(), got)
		}
	}
	for i, r := range mustAppend(t, a, itemsOf("acct", evs...)) {
		if !r.Duplicate {
			t.Errorf("event %d again: %+v, want duplicate", i, r)
		}
	}
}

// countPipelines counts the pipelines sent; the first one waits for
// release before it goes, so that calls queue behind it.
type countPipelines struct {
	n       atomic.Int64
	release chan struct{}
}

func (h *countPipelines) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *countPipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *countPipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.n.Add(1) == 1 {
			<-h.release
		}
		return next(ctx, cmds)
	}
}

// Concurrent single-event calls share round trips: the calls that arrive
// while one is in flight go together in the next, and each caller gets its
// own answers (new, or the duplicate of a call combined with it), with every
// event stored and counted once.
func TestAppendCombinesConcurrentCalls(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	ctx := context.Background()
	a := appender.New(rdb, appender.Options{})
	if err := a.Load(ctx); err != nil {
		t.Fatal(err)
	}
	hook := &countPipelines{release: make(chan struct{})}
	rdb.AddHook(hook)
	const callers = 64
	types := []string{orderCreated, orderPaid}
	// Callers 2k and 2k+1 (k < 8) send the same event: one is stored, the
	// other answered duplicate with its cursor.
	eventOf := func(i int) *eventv1.CloudEvent {
		id := fmt.Sprintf("c-%d", i)
		if i < 16 {
			id = fmt.Sprintf("pair-%d", i/2)
		}
		return newEvent(types[i%2], "//shop", id)
	}
	res := make([]appender.Result, callers)
	var wg sync.WaitGroup
	first := make(chan struct{})
	go func() {
		defer close(first)
		res[callers-1] = mustAppend(t, a, itemsOf("acct", newEvent(orderCreated, "//shop", "opener")))[0]
	}()
	testutil.Eventually(t, 10*time.Second, func() bool { return hook.n.Load() == 1 }, "the first round trip in flight")
	for i := range callers - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Pairs share a type, so the two land in one stream.
			ev := eventOf(i)
			if i < 16 {
				ev.Type = types[(i/2)%2]
			}
			res[i] = mustAppend(t, a, itemsOf("acct", ev))[0]
		}()
	}
	// Every other call queued behind the first: release it.
	time.Sleep(200 * time.Millisecond)
	close(hook.release)
	wg.Wait()
	<-first
	if n := hook.n.Load(); n >= callers/2 {
		t.Errorf("%d round trips for %d concurrent calls: not combined", n, callers)
	}
	cursors := map[string]int{}
	dups := 0
	for i, r := range res {
		if r.Cursor == "" {
			t.Fatalf("call %d: no cursor", i)
		}
		if r.Duplicate {
			dups++
		}
		cursors[r.Cursor]++
	}
	for i := 0; i < 16; i += 2 {
		a, b := res[i], res[i+1]
		if a.Cursor != b.Cursor || a.Duplicate == b.Duplicate {
			t.Errorf("pair %d: %+v and %+v, want one new and one duplicate with its cursor", i/2, a, b)
		}
	}
	if dups != 8 || len(cursors) != callers-8 {
		t.Errorf("%d duplicates, %d distinct cursors; want 8 and %d", dups, len(cursors), callers-8)
	}
	stored := len(stream(t, rdb, orderCreated)) + len(stream(t, rdb, orderPaid))
	if stored != callers-8 {
		t.Errorf("%d entries stored, want %d", stored, callers-8)
	}
	var counted int64
	for _, typ := range types {
		vals, err := rdb.HGetAll(ctx, appender.CountKey(typ)).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			var n int64
			fmt.Sscan(v, &n)
			counted += n
		}
	}
	if counted != callers-8 {
		t.Errorf("%d events counted, want %d", counted, callers-8)
	}
}
