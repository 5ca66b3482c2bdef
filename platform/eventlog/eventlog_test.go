package eventlog_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

func TestParseID(t *testing.T) {
	cases := []struct {
		in      string
		want    eventlog.ID
		str     string // String() of the parsed id
		wantErr bool
	}{
		{in: "0", want: eventlog.Zero, str: "0-0"},
		{in: "0-0", want: eventlog.Zero, str: "0-0"},
		{in: "5", want: eventlog.ID{Ms: 5}, str: "5-0"},
		{in: "1700000000000-0", want: eventlog.ID{Ms: 1700000000000}, str: "1700000000000-0"},
		{in: "1700000000000-42", want: eventlog.ID{Ms: 1700000000000, Seq: 42}, str: "1700000000000-42"},
		{in: "007-008", want: eventlog.ID{Ms: 7, Seq: 8}, str: "7-8"},
		{in: "18446744073709551615-18446744073709551615", want: eventlog.ID{Ms: math.MaxUint64, Seq: math.MaxUint64}, str: "18446744073709551615-18446744073709551615"},
		{in: "", wantErr: true},
		{in: "-", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "1-", wantErr: true},
		{in: "1--2", wantErr: true},
		{in: "1-2-3", wantErr: true},
		{in: "abc", wantErr: true},
		{in: "1-a", wantErr: true},
		{in: "+1", wantErr: true},
		{in: "1-+2", wantErr: true},
		{in: " 1-2", wantErr: true},
		{in: "1-2 ", wantErr: true},
		{in: "1.5", wantErr: true},
		{in: "0x10", wantErr: true},
		{in: "$", wantErr: true},
		{in: "1-*", wantErr: true},
		{in: "18446744073709551616", wantErr: true},
		{in: "1-18446744073709551616", wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			got, err := eventlog.ParseID(c.in)
			if c.wantErr {
				if err == nil {
					t.Fatalf("ParseID(%q) = %v, want an error", c.in, got)
				}
				if !strings.Contains(err.Error(), "stream id") {
					t.Errorf("error %q does not explain the expected form", err)
				}
				if got != (eventlog.ID{}) {
					t.Errorf("ParseID(%q) returned %v with its error, want the zero ID", c.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseID(%q): %v", c.in, err)
			}
			if got != c.want {
				t.Fatalf("ParseID(%q) = %+v, want %+v", c.in, got, c.want)
			}
			if s := got.String(); s != c.str {
				t.Fatalf("String() = %q, want %q", s, c.str)
			}
			back, err := eventlog.ParseID(got.String())
			if err != nil || back != got {
				t.Fatalf("ParseID(String()) = %v, %v; want %v", back, err, got)
			}
		})
	}
}

func TestMustParseID(t *testing.T) {
	if got := eventlog.MustParseID("3-4"); got != (eventlog.ID{Ms: 3, Seq: 4}) {
		t.Fatalf("MustParseID(3-4) = %v", got)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("MustParseID(bad) did not panic")
		}
	}()
	eventlog.MustParseID("bad")
}

func TestCompare(t *testing.T) {
	id := func(ms, seq uint64) eventlog.ID { return eventlog.ID{Ms: ms, Seq: seq} }
	cases := []struct {
		a, b eventlog.ID
		want int
	}{
		{id(0, 0), id(0, 0), 0},
		{id(1, 0), id(1, 0), 0},
		{id(1, 5), id(1, 5), 0},
		{id(1, 0), id(2, 0), -1},
		{id(2, 0), id(1, 0), 1},
		{id(1, 1), id(1, 2), -1},
		{id(1, 2), id(1, 1), 1},
		{id(1, math.MaxUint64), id(2, 0), -1}, // ms decides before seq
		{id(2, 0), id(1, math.MaxUint64), 1},
		{eventlog.Zero, id(0, 1), -1},
		{id(math.MaxUint64, math.MaxUint64), id(math.MaxUint64, math.MaxUint64-1), 1},
	}
	for _, c := range cases {
		if got := c.a.Compare(c.b); got != c.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := c.b.Compare(c.a); got != -c.want {
			t.Errorf("%v.Compare(%v) = %d, want %d", c.b, c.a, got, -c.want)
		}
		if got := c.a.Less(c.b); got != (c.want < 0) {
			t.Errorf("%v.Less(%v) = %v, want %v", c.a, c.b, got, c.want < 0)
		}
	}
}

func TestStreamKey(t *testing.T) {
	for _, typ := range []string{"billing.invoice.paid", "a.b", "x.y-z_1"} {
		key := eventlog.StreamKey(typ)
		if want := "herald:log:{" + typ + "}"; key != want {
			t.Errorf("StreamKey(%q) = %q, want %q", typ, key, want)
		}
		if got := eventlog.TypeOfStream(key); got != typ {
			t.Errorf("TypeOfStream(%q) = %q, want %q", key, got, typ)
		}
	}
}

func TestTags(t *testing.T) {
	for _, c := range []struct {
		typ  string
		p    int
		tag  string
		want string
	}{
		{"a.b", 0, "a.b", "herald:log:{a.b}"},
		{"a.b", 3, "a.b#3", "herald:log:{a.b#3}"},
	} {
		if got := eventlog.Tag(c.typ, c.p); got != c.tag {
			t.Errorf("Tag(%q, %d) = %q, want %q", c.typ, c.p, got, c.tag)
		}
		key := eventlog.PartitionKey(c.typ, c.p)
		if key != c.want || eventlog.TagKey(c.tag) != key {
			t.Errorf("PartitionKey(%q, %d) = %q, TagKey = %q; want %q", c.typ, c.p, key, eventlog.TagKey(c.tag), c.want)
		}
		if tag, ok := eventlog.TagOfStream(key); !ok || tag != c.tag {
			t.Errorf("TagOfStream(%q) = %q, %v", key, tag, ok)
		}
	}
	for _, k := range []string{"herald:usage", "herald:log:{a.b", "herald:sub:{s}:replay"} {
		if tag, ok := eventlog.TagOfStream(k); ok {
			t.Errorf("TagOfStream(%q) = %q, true; want not a log stream", k, tag)
		}
	}
}

func newRedis(t *testing.T) *redis.Client {
	t.Helper()
	return testutil.RedisClient(t, testutil.Redis(t))
}

func event(typ, id string) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id: id, Source: "/test", SpecVersion: "1.0", Type: typ,
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"subject": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "s-" + id}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: `{"id":"` + id + `"}`},
	}
}

// add appends an event of typ with the given entry id ("*" lets Redis pick)
// and returns its cursor.
func add(t testing.TB, rdb redis.Cmdable, typ, entryID, evID string) eventlog.ID {
	t.Helper()
	fields, err := eventlog.Encode(event(typ, evID), "acct-"+evID)
	if err != nil {
		t.Fatal(err)
	}
	s, err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.StreamKey(typ), ID: entryID, Values: fields}).Result()
	if err != nil {
		t.Fatalf("XADD %s %s: %v", typ, entryID, err)
	}
	return eventlog.MustParseID(s)
}

func TestEncodeDecode(t *testing.T) {
	rdb := newRedis(t)
	ctx := context.Background()
	typ := "billing.invoice.paid"
	id := add(t, rdb, typ, "*", "e1")
	msgs, err := rdb.XRange(ctx, eventlog.StreamKey(typ), "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("XRANGE: %v %v", msgs, err)
	}
	e, err := eventlog.Decode(eventlog.StreamKey(typ), msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != id || e.Type != typ || e.Account != "acct-e1" {
		t.Fatalf("Decode = id %v type %q account %q; want %v %q %q", e.ID, e.Type, e.Account, id, typ, "acct-e1")
	}
	if !proto.Equal(e.Event, event(typ, "e1")) {
		t.Fatalf("decoded event %v, want %v", e.Event, event(typ, "e1"))
	}

	bad := redis.XMessage{ID: "1-1", Values: map[string]any{eventlog.FieldEvent: "\xff\xff\xff", eventlog.FieldApp: "a"}}
	if _, err := eventlog.Decode(eventlog.StreamKey(typ), bad); err == nil {
		t.Fatal("Decode of a corrupt entry did not fail")
	}
}

// collect reads from Zero until every entry has been seen, the way the hub
// and the catch-up do, and returns the entries in the order they came.
func collect(t *testing.T, rdb redis.Cmdable, streams []string, count int64, want int) []eventlog.Entry {
	t.Helper()
	return collectAfter(t, rdb, streams, eventlog.Zero, count, want)
}

// collectAfter is collect from a resume position.
func collectAfter(t *testing.T, rdb redis.Cmdable, streams []string, pos eventlog.ID, count int64, want int) []eventlog.Entry {
	t.Helper()
	var out []eventlog.Entry
	for calls := 0; len(out) < want; calls++ {
		if calls > 10*want+10 {
			t.Fatalf("no progress: %d of %d entries after %d calls, position %v", len(out), want, calls, pos)
		}
		entries, next, err := eventlog.ReadAfter(context.Background(), rdb, streams, pos, count)
		if err != nil {
			t.Fatal(err)
		}
		if next.Less(pos) {
			t.Fatalf("position went back from %v to %v", pos, next)
		}
		for _, e := range entries {
			if !pos.Less(e.ID) {
				t.Fatalf("entry %v at or before the position %v it was read after", e.ID, pos)
			}
			if next.Less(e.ID) {
				t.Fatalf("entry %v beyond the returned position %v", e.ID, next)
			}
		}
		out = append(out, entries...)
		pos = next
	}
	// Nothing more.
	entries, _, err := eventlog.ReadAfter(context.Background(), rdb, streams, pos, count)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("%d entries after the last one: %v", len(entries), entries[0].ID)
	}
	return out
}

// checkMerged checks that got is want's entries, each once, in cursor order
// (entries of different streams may share an id).
func checkMerged(t *testing.T, got []eventlog.Entry, want map[string]eventlog.ID) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d", len(got), len(want))
	}
	seen := map[string]bool{}
	for i, e := range got {
		id := e.Event.GetId()
		if seen[id] {
			t.Fatalf("entry %s (%v) returned twice", id, e.ID)
		}
		seen[id] = true
		if w, ok := want[id]; !ok || w != e.ID {
			t.Fatalf("entry %s at %v, want %v (known: %v)", id, e.ID, w, ok)
		}
		if e.Event.GetType() != e.Type || e.Account != "acct-"+id {
			t.Fatalf("entry %s: type %q account %q", id, e.Type, e.Account)
		}
		if i > 0 {
			switch c := got[i-1].ID.Compare(e.ID); {
			case c > 0:
				t.Fatalf("entry %d (%v) after %v: not in cursor order", i, e.ID, got[i-1].ID)
			case c == 0 && got[i-1].Type == e.Type:
				t.Fatalf("entries %d and %d of one stream share id %v", i-1, i, e.ID)
			}
		}
	}
}

func TestReadAfterMerges(t *testing.T) {
	rdb := newRedis(t)
	streams := []string{eventlog.StreamKey("a.x"), eventlog.StreamKey("b.x"), eventlog.StreamKey("c.x")}
	want := map[string]eventlog.ID{}
	// Explicit ids, far in the past: a has 1,3,5; b has 2,3,6; c has 4.
	// Streams can share an id: both a and b have 3-0.
	for _, w := range []struct{ typ, id string }{
		{"a.x", "1-0"}, {"a.x", "3-0"}, {"a.x", "5-0"},
		{"b.x", "2-0"}, {"b.x", "3-0"}, {"b.x", "6-0"},
		{"c.x", "4-0"},
	} {
		evID := w.typ + "@" + w.id
		want[evID] = add(t, rdb, w.typ, w.id, evID)
	}
	entries, complete, err := eventlog.ReadAfter(context.Background(), rdb, streams, eventlog.Zero, 100)
	if err != nil {
		t.Fatal(err)
	}
	checkMerged(t, entries, want)
	var order []string
	for _, e := range entries {
		order = append(order, e.ID.String())
	}
	if got := strings.Join(order, " "); got != "1-0 2-0 3-0 3-0 4-0 5-0 6-0" {
		t.Fatalf("order %s", got)
	}
	if complete.Less(eventlog.ID{Ms: 6}) {
		t.Fatalf("complete = %v, want at least 6-0", complete)
	}

	// From the middle; the returned position is never below the input.
	entries, complete2, err := eventlog.ReadAfter(context.Background(), rdb, streams, eventlog.ID{Ms: 3}, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 || entries[0].ID != (eventlog.ID{Ms: 4}) || entries[2].ID != (eventlog.ID{Ms: 6}) {
		t.Fatalf("after 3-0: %v", entries)
	}
	if complete2.Less(complete) {
		t.Fatalf("position went back: %v then %v", complete, complete2)
	}
}

func TestReadAfterCountKeepsCompleteness(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   func(stream, k int) string
	}{
		{"interleaved", func(s, k int) string { return fmt.Sprintf("%d-0", k*3+s+1) }},
		{"shared ids", func(_, k int) string { return fmt.Sprintf("%d-0", k+1) }},
		{"one stream ahead", func(s, k int) string { return fmt.Sprintf("%d-%d", 10+k+s*100, s) }},
		{"same millisecond", func(s, k int) string { return fmt.Sprintf("7-%d", k*3+s) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rdb := newRedis(t)
			types := []string{"a.x", "b.x", "c.x"}
			var streams []string
			want := map[string]eventlog.ID{}
			for s, typ := range types {
				streams = append(streams, eventlog.StreamKey(typ))
				for k := range 5 {
					evID := fmt.Sprintf("%s-%d", typ, k)
					want[evID] = add(t, rdb, typ, tc.id(s, k), evID)
				}
			}
			for _, count := range []int64{1, 2, 3, 5, 100} {
				got := collect(t, rdb, streams, count, len(want))
				checkMerged(t, got, want)
			}
		})
	}
}

// Entries written with XADD * (as the router does) are all returned, in
// order, once their millisecond has passed.
func TestReadAfterAutoIDs(t *testing.T) {
	rdb := newRedis(t)
	types := []string{"a.x", "b.x", "c.x", "d.x"}
	var streams []string
	for _, typ := range types {
		streams = append(streams, eventlog.StreamKey(typ))
	}
	want := map[string]eventlog.ID{}
	var last eventlog.ID
	for i := range 300 {
		typ := types[i%len(types)]
		evID := fmt.Sprintf("auto-%d", i)
		id := add(t, rdb, typ, "*", evID)
		want[evID] = id
		if last.Less(id) {
			last = id
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		now, err := rdb.Time(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if uint64(now.UnixMilli()) > last.Ms {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("redis clock did not pass the last entry")
		}
		time.Sleep(time.Millisecond)
	}
	checkMerged(t, collect(t, rdb, streams, 7, len(want)), want)
}

// An entry stamped at or after the current millisecond is held back: a write
// to another stream could still get a lower id.
func TestReadAfterHoldsBackCurrentMillisecond(t *testing.T) {
	rdb := newRedis(t)
	ctx := context.Background()
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	future := eventlog.ID{Ms: uint64(now.UnixMilli()) + uint64(time.Hour/time.Millisecond)}
	past := add(t, rdb, "a.x", "1-0", "past")
	add(t, rdb, "b.x", future.String(), "future")
	streams := []string{eventlog.StreamKey("a.x"), eventlog.StreamKey("b.x")}

	pos := eventlog.Zero
	for range 3 {
		entries, complete, err := eventlog.ReadAfter(ctx, rdb, streams, pos, 10)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.ID != past {
				t.Fatalf("got entry %v; want only %v before the clock reaches %v", e.ID, past, future)
			}
		}
		if !complete.Less(future) {
			t.Fatalf("complete = %v, not below the held-back entry %v", complete, future)
		}
		if complete.Less(past) {
			t.Fatalf("complete = %v, below the returned entry %v", complete, past)
		}
		if complete.Ms >= future.Ms || complete.Ms > uint64(time.Now().Add(time.Minute).UnixMilli()) {
			t.Fatalf("complete = %v runs ahead of the clock", complete)
		}
		pos = complete
	}
	// A later write to the other stream is stamped above the position.
	later := add(t, rdb, "a.x", "*", "later")
	if !pos.Less(later) {
		t.Fatalf("new entry %v at or below the completed position %v", later, pos)
	}
}

func TestReadAfterEdgeCases(t *testing.T) {
	rdb := newRedis(t)
	ctx := context.Background()
	after := eventlog.ID{Ms: 5, Seq: 5}

	entries, complete, err := eventlog.ReadAfter(ctx, rdb, nil, after, 10)
	if err != nil || len(entries) != 0 || complete != after {
		t.Fatalf("no streams: %v %v %v", entries, complete, err)
	}

	entries, complete, err = eventlog.ReadAfter(ctx, rdb, []string{eventlog.StreamKey("none.x")}, after, 10)
	if err != nil || len(entries) != 0 {
		t.Fatalf("missing stream: %v %v", entries, err)
	}
	if complete.Less(after) {
		t.Fatalf("missing stream: position %v went below %v", complete, after)
	}

	// A position beyond the clock stays where it is.
	ahead := eventlog.ID{Ms: math.MaxUint64 / 2}
	_, complete, err = eventlog.ReadAfter(ctx, rdb, []string{eventlog.StreamKey("none.x")}, ahead, 10)
	if err != nil || complete != ahead {
		t.Fatalf("position ahead of the clock: %v %v, want %v", complete, err, ahead)
	}

	// A corrupt entry is an error, not a silent skip.
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: eventlog.StreamKey("bad.x"), ID: "1-0", Values: []any{eventlog.FieldEvent, "\xff\xff", eventlog.FieldApp, "a"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := eventlog.ReadAfter(ctx, rdb, []string{eventlog.StreamKey("bad.x")}, eventlog.Zero, 10); err == nil {
		t.Fatal("ReadAfter over a corrupt entry did not fail")
	}

	// Redis errors are reported.
	if err := rdb.Set(ctx, eventlog.StreamKey("string.x"), "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := eventlog.ReadAfter(ctx, rdb, []string{eventlog.StreamKey("string.x")}, eventlog.Zero, 10); err == nil {
		t.Fatal("ReadAfter of a non-stream key did not fail")
	}
}

func TestWaitAfter(t *testing.T) {
	rdb := newRedis(t)
	ctx := context.Background()
	streams := []string{eventlog.StreamKey("a.x"), eventlog.StreamKey("b.x")}

	if more, err := eventlog.WaitAfter(ctx, rdb, nil, eventlog.Zero, time.Second); more || err != nil {
		t.Fatalf("no streams: %v %v", more, err)
	}
	if more, err := eventlog.WaitAfter(ctx, rdb, streams, eventlog.Zero, 10*time.Millisecond); more || err != nil {
		t.Fatalf("empty streams: %v %v", more, err)
	}
	id := add(t, rdb, "b.x", "*", "one")
	if more, err := eventlog.WaitAfter(ctx, rdb, streams, eventlog.Zero, time.Second); !more || err != nil {
		t.Fatalf("entry present: %v %v", more, err)
	}
	if more, err := eventlog.WaitAfter(ctx, rdb, streams, id, 10*time.Millisecond); more || err != nil {
		t.Fatalf("nothing after the last entry: %v %v", more, err)
	}

	// A blocked wait wakes up on a write.
	done := make(chan error, 1)
	go func() {
		more, err := eventlog.WaitAfter(ctx, rdb, streams, id, 30*time.Second)
		if err == nil && !more {
			err = fmt.Errorf("woke up without an entry")
		}
		done <- err
	}()
	// Write until the waiter sees one: it may not be blocked yet on the first.
	deadline := time.After(30 * time.Second)
	for i := 0; ; i++ {
		add(t, rdb, "a.x", "*", fmt.Sprintf("wake-%d", i))
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatal("WaitAfter did not wake up on a write")
		}
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"0", "1-0", "1700000000000-5", "18446744073709551615-18446744073709551615", "", "-", "1-", "-1", "1-2-3", "+1", "18446744073709551616", "a-b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := eventlog.ParseID(s)
		if err != nil {
			if id != (eventlog.ID{}) {
				t.Fatalf("ParseID(%q) returned %v with an error", s, id)
			}
			return
		}
		str := id.String()
		back, err := eventlog.ParseID(str)
		if err != nil || back != id {
			t.Fatalf("ParseID(%q) = %v; ParseID(%q) = %v, %v", s, id, str, back, err)
		}
		if back.Compare(id) != 0 || id.Less(back) {
			t.Fatalf("%v does not compare equal to itself", id)
		}
		if !strings.Contains(s, "-") && id.Seq != 0 {
			t.Fatalf("ParseID(%q) = %v: a bare millisecond has sequence 0", s, id)
		}
		if next := (eventlog.ID{Ms: id.Ms, Seq: id.Seq + 1}); id.Seq < math.MaxUint64 && !id.Less(next) {
			t.Fatalf("%v is not below %v", id, next)
		}
	})
}

func TestPartitionKeys(t *testing.T) {
	const typ = "orders.order.placed"
	keys := eventlog.StreamKeys(typ, 3)
	want := []string{"herald:log:{orders.order.placed}", "herald:log:{orders.order.placed#1}", "herald:log:{orders.order.placed#2}"}
	if !slices.Equal(keys, want) {
		t.Fatalf("StreamKeys = %v, want %v", keys, want)
	}
	for _, k := range keys {
		if got := eventlog.TypeOfStream(k); got != typ {
			t.Errorf("eventlog.TypeOfStream(%s) = %s", k, got)
		}
	}
	if got := eventlog.StreamKeys(typ, 0); len(got) != 1 || got[0] != eventlog.StreamKey(typ) {
		t.Errorf("eventlog.StreamKeys(n=0) = %v", got)
	}
	seen := map[int]bool{}
	for i := range 1000 {
		key := fmt.Sprint("customer-", i)
		p := eventlog.Partition(key, 4)
		if p < 0 || p >= 4 || p != eventlog.Partition(key, 4) {
			t.Fatalf("eventlog.Partition(%s, 4) = %d, not stable or out of range", key, p)
		}
		seen[p] = true
	}
	if len(seen) != 4 {
		t.Errorf("1000 keys used partitions %v of 4", seen)
	}
	if eventlog.Partition("anything", 1) != 0 {
		t.Error("one partition must be partition 0")
	}
}
