package amqp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
)

// publishAll publishes msgs to queue through the default exchange with a
// plain client, and waits for the broker's confirms.
func publishAll(t testing.TB, url, queue string, msgs ...amqp.Publishing) {
	t.Helper()
	ch := client(t, url)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	var dcs []*amqp.DeferredConfirmation
	for _, m := range msgs {
		m.DeliveryMode = amqp.Persistent
		dc, err := ch.PublishWithDeferredConfirm("", queue, true, false, m)
		if err != nil {
			t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		if !dc.Wait() {
			t.Fatal("broker nacked a test message")
		}
	}
}

// collector is a PublishFunc that keeps what it was handed.
type collector struct {
	mu    sync.Mutex
	recs  []bridge.Record
	calls int
	fail  func(call int) error
}

func (c *collector) publish(ctx context.Context, recs []bridge.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.fail != nil {
		if err := c.fail(c.calls); err != nil {
			return err
		}
	}
	c.recs = append(c.recs, recs...)
	return nil
}

func (c *collector) records() []bridge.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]bridge.Record(nil), c.recs...)
}

// run runs src until stop is called, which waits for Run to return nil.
func run(t testing.TB, src *Source, batch int, publish bridge.PublishFunc) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- src.Run(ctx, batch, publish) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func queueDepth(t testing.TB, url, queue string) int {
	t.Helper()
	ch := client(t, url)
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	ch.Close()
	return q.Messages
}

// TestSourceShapes: messages of every shape a plain client can publish
// become the right events; unreadable ones become records with Err and
// the queue flows on.
func TestSourceShapes(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url := testutil.SharedRabbitMQ(t)
	q := name(t, "q")
	declare(t, client(t, url), q, "", "", nil)

	structured, err := cloudevent.MarshalJSON(jsonEvent("s1", "billing.invoice.paid"))
	if err != nil {
		t.Fatal(err)
	}
	stamp := time.Date(2026, 12, 1, 8, 30, 0, 0, time.UTC)
	sum := sha256.Sum256([]byte("hello"))
	type want struct {
		id, typ, source, ct, data, time string
		err                             bool
	}
	cases := []struct {
		name string
		msg  amqp.Publishing
		want want
	}{
		{"structured", amqp.Publishing{ContentType: "application/cloudevents+json; charset=utf-8", Body: structured},
			want{id: "s1", typ: "billing.invoice.paid", source: "//herald/test", ct: "application/json", data: `{"n":"s1"}`, time: "2026-12-03T12:00:00Z"}},
		{"binary cloudEvents:", amqp.Publishing{ContentType: "application/json", Body: []byte(`{"a":1}`), Headers: amqp.Table{
			"cloudEvents:specversion": "1.0", "cloudEvents:id": "b1", "cloudEvents:source": "//shop", "cloudEvents:type": "shop.cart.filled", "cloudEvents:time": "2026-12-02T10:00:00Z", "other": "x"}},
			want{id: "b1", typ: "shop.cart.filled", source: "//shop", ct: "application/json", data: `{"a":1}`, time: "2026-12-02T10:00:00Z"}},
		{"binary cloudEvents_", amqp.Publishing{ContentType: "text/plain", Body: []byte("hi"), Headers: amqp.Table{
			"cloudEvents_specversion": "1.0", "cloudEvents_id": "b2", "cloudEvents_source": "//jms", "cloudEvents_type": "jms.thing.done"}},
			want{id: "b2", typ: "jms.thing.done", source: "//jms", ct: "text/plain", data: "hi"}},
		{"binary ce_ with a timestamp header", amqp.Publishing{Body: []byte(`[1]`), Headers: amqp.Table{
			"ce_specversion": "1.0", "ce_id": "b3", "ce_source": "//ce", "ce_type": "ce.x.y", "ce_time": stamp}},
			want{id: "b3", typ: "ce.x.y", source: "//ce", data: `[1]`, time: "2026-12-01T08:30:00Z"}},
		{"plain JSON with message-id", amqp.Publishing{MessageId: "m-1", Timestamp: stamp, Body: []byte(`{"order":1}`)},
			want{id: "m-1", typ: "legacy.order.placed", source: "amqp://" + q, ct: "application/json", data: `{"order":1}`, time: "2026-12-01T08:30:00Z"}},
		{"garbage structured", amqp.Publishing{ContentType: "application/cloudevents+json", Body: []byte("not json")}, want{err: true}},
		{"binary without an id", amqp.Publishing{Headers: amqp.Table{"cloudEvents:specversion": "1.0", "cloudEvents:source": "//x", "cloudEvents:type": "x.y.z"}}, want{err: true}},
		{"structured but not JSON", amqp.Publishing{ContentType: "application/cloudevents+avro", Body: []byte{1}}, want{err: true}},
		{"plain text without message-id", amqp.Publishing{ContentType: "text/plain", Body: []byte("hello")},
			want{id: "amqp-" + hex.EncodeToString(sum[:]), typ: "legacy.order.placed", source: "amqp://" + q, ct: "text/plain", data: "hello"}},
	}
	var msgs []amqp.Publishing
	for _, c := range cases {
		msgs = append(msgs, c.msg)
	}
	publishAll(t, url, q, msgs...)

	src, err := NewSource(sourceConfig(url, q))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	c := &collector{}
	stop := run(t, src, 4, c.publish)
	testutil.Eventually(t, 30*time.Second, func() bool { return len(c.records()) == len(cases) }, "every message published")
	stop()
	testutil.Eventually(t, 10*time.Second, func() bool { return queueDepth(t, url, q) == 0 }, "the queue empty: every message acknowledged")

	for i, rec := range c.records() {
		tc := cases[i]
		if string(rec.Raw) != string(tc.msg.Body) || rec.Position == "" {
			t.Errorf("%s: raw %q position %q", tc.name, rec.Raw, rec.Position)
		}
		if tc.want.err {
			if rec.Err == nil || rec.Event != nil {
				t.Errorf("%s: event %v err %v, want an error", tc.name, rec.Event, rec.Err)
			}
			continue
		}
		if rec.Err != nil {
			t.Errorf("%s: %v", tc.name, rec.Err)
			continue
		}
		ev := rec.Event
		attrs := cloudevent.Attributes(ev)
		var data string
		if raw, ok := cloudevent.JSONData(ev); ok {
			data = string(raw)
		} else {
			data = ev.GetTextData()
		}
		tm, _ := attrs["time"].(string)
		if ev.GetId() != tc.want.id || ev.GetType() != tc.want.typ || ev.GetSource() != tc.want.source ||
			cloudevent.ContentType(ev) != tc.want.ct || data != tc.want.data || tm != tc.want.time {
			t.Errorf("%s: got id %q type %q source %q ct %q data %q time %q (%v), want %+v", tc.name,
				ev.GetId(), ev.GetType(), ev.GetSource(), cloudevent.ContentType(ev), data, tm, attrs, tc.want)
		}
	}
}

// TestSourcePublishFails: a publish that fails once loses nothing: its
// records come again, with the same ids.
func TestSourcePublishFails(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url := testutil.SharedRabbitMQ(t)
	q := name(t, "q")
	declare(t, client(t, url), q, "", "", nil)
	var msgs []amqp.Publishing
	for i := range 20 {
		msgs = append(msgs, amqp.Publishing{MessageId: fmt.Sprint("m", i), Body: []byte(fmt.Sprintf(`{"i":%d}`, i))})
	}
	publishAll(t, url, q, msgs...)

	src, err := NewSource(sourceConfig(url, q))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var failedIDs []string
	c := &collector{}
	c.fail = func(call int) error {
		if call == 1 {
			return errors.New("router unavailable")
		}
		return nil
	}
	wrapped := func(ctx context.Context, recs []bridge.Record) error {
		err := c.publish(ctx, recs)
		if err != nil {
			for _, r := range recs {
				failedIDs = append(failedIDs, r.Event.GetId())
			}
		}
		return err
	}
	stop := run(t, src, 5, wrapped)
	ids := func() map[string]int {
		m := map[string]int{}
		for _, r := range c.records() {
			m[r.Event.GetId()]++
		}
		return m
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return len(ids()) == 20 }, "all 20 ids published")
	stop()
	if len(failedIDs) == 0 {
		t.Fatal("the failing publish saw no records")
	}
	got := ids()
	for _, id := range failedIDs {
		if got[id] == 0 {
			t.Errorf("record %s of the failed publish never came again", id)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return queueDepth(t, url, q) == 0 }, "the queue empty")
}

// TestSourceCrash: a source that dies before publish returned acknowledges
// nothing; the next one gets the same records with the same ids.
func TestSourceCrash(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url := testutil.SharedRabbitMQ(t)
	q := name(t, "q")
	declare(t, client(t, url), q, "", "", nil)
	var msgs []amqp.Publishing
	for i := range 10 {
		msgs = append(msgs, amqp.Publishing{Body: []byte(fmt.Sprintf("payload %d", i))}) // no message-id
	}
	publishAll(t, url, q, msgs...)

	first, err := NewSource(sourceConfig(url, q))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	stuck := func(ctx context.Context, recs []bridge.Record) error {
		mu.Lock()
		for _, r := range recs {
			seen[r.Event.GetId()] = true
		}
		mu.Unlock()
		<-ctx.Done() // the router never answers: the process dies
		return ctx.Err()
	}
	stop := run(t, first, 10, stuck)
	testutil.Eventually(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 10 }, "the first source read all 10")
	first.Close() // the connection drops with nothing acknowledged
	stop()

	second, err := NewSource(sourceConfig(url, q))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	c := &collector{}
	stop = run(t, second, 10, c.publish)
	testutil.Eventually(t, 30*time.Second, func() bool { return len(c.records()) == 10 }, "the second source got all 10 again")
	stop()
	for _, r := range c.records() {
		if !seen[r.Event.GetId()] {
			t.Errorf("id %s after the crash was not seen before it: ids must be stable", r.Event.GetId())
		}
	}
}

// TestSourceLag: Lag is the queue's ready messages; a missing queue is an
// error for Lag and Run alike.
func TestSourceLag(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url := testutil.SharedRabbitMQ(t)
	q := name(t, "q")
	declare(t, client(t, url), q, "", "", nil)
	src, err := NewSource(sourceConfig(url, q))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	lag := func() int64 {
		n, err := src.Lag(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := lag(); n != 0 {
		t.Fatalf("lag of an empty queue: %d", n)
	}
	var msgs []amqp.Publishing
	for i := range 7 {
		msgs = append(msgs, amqp.Publishing{MessageId: fmt.Sprint(i), Body: []byte("{}")})
	}
	publishAll(t, url, q, msgs...)
	testutil.Eventually(t, 10*time.Second, func() bool { return lag() == 7 }, "lag 7 after 7 messages")

	c := &collector{}
	stop := run(t, src, 3, c.publish)
	testutil.Eventually(t, 30*time.Second, func() bool { return len(c.records()) == 7 }, "all 7 consumed")
	stop()
	testutil.Eventually(t, 10*time.Second, func() bool { return lag() == 0 }, "lag 0 once consumed")

	missing, err := NewSource(sourceConfig(url, name(t, "missing")))
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	if _, err := missing.Lag(context.Background()); err == nil {
		t.Error("Lag of a missing queue: no error")
	}
	if err := missing.Run(context.Background(), 10, c.publish); err == nil {
		t.Error("Run on a missing queue: no error")
	}
}
