package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

// TestSink publishes in both modes and reads the messages back with a
// plain amqp091 consumer.
func TestSink(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url := testutil.SharedRabbitMQ(t)
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ch := client(t, url)
			ex := name(t, "ex")
			if err := ch.ExchangeDeclare(ex, "topic", true, false, false, false, nil); err != nil {
				t.Fatal(err)
			}
			q := name(t, "q")
			declare(t, ch, q, ex, "orders.#", nil)

			s, err := NewSink(sinkConfig(url, ex, "orders.{type}", structured))
			if err != nil {
				t.Fatal(err)
			}
			defer closeSink(t, s)
			bin := &eventv1.CloudEvent{Id: "b1", Source: "//herald/test", SpecVersion: "1.0", Type: "file.uploaded",
				Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
					"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/octet-stream"}},
					"tenant":          {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeInteger{CeInteger: 7}},
				},
				Data: &eventv1.CloudEvent_BinaryData{BinaryData: []byte{0, 1, 2, 255}}}
			evs := []*eventv1.CloudEvent{jsonEvent("e1", "billing.invoice.paid"), jsonEvent("e2", "billing.invoice.sent"), bin}
			r := newResults()
			s.Send(context.Background(), messages(evs...), r.done)
			for i, err := range r.wait(t, len(evs)) {
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
			}

			got := drain(t, ch, q, len(evs))
			for i, d := range got {
				want := evs[i]
				if d.RoutingKey != "orders."+want.GetType() {
					t.Errorf("routing key %q, want orders.%s", d.RoutingKey, want.GetType())
				}
				if d.MessageId != want.GetId() || d.DeliveryMode != amqp.Persistent {
					t.Errorf("message-id %q delivery mode %d, want %q persistent", d.MessageId, d.DeliveryMode, want.GetId())
				}
				var ev *eventv1.CloudEvent
				if structured {
					if d.ContentType != cloudevent.StructuredContentType || len(d.Headers) != 0 {
						t.Errorf("structured: content type %q headers %v", d.ContentType, d.Headers)
					}
					if ev, err = cloudevent.UnmarshalJSON(d.Body); err != nil {
						t.Fatalf("body %s: %v", d.Body, err)
					}
				} else {
					b := cloudevent.ToBinary(want)
					if d.ContentType != b.ContentType || string(d.Body) != string(b.Body) {
						t.Errorf("binary: content type %q body %q, want %q %q", d.ContentType, d.Body, b.ContentType, b.Body)
					}
					if len(d.Headers) != len(b.Attributes) {
						t.Errorf("headers %v, want one per attribute of %v", d.Headers, b.Attributes)
					}
					for k, v := range b.Attributes {
						if d.Headers["cloudEvents:"+k] != v {
							t.Errorf("header cloudEvents:%s = %v, want %q", k, d.Headers["cloudEvents:"+k], v)
						}
					}
					if ev, err = cloudevent.FromBinary(cloudevent.Binary{Attributes: b.Attributes, ContentType: d.ContentType, Body: d.Body}); err != nil {
						t.Fatal(err)
					}
				}
				if ev.GetId() != want.GetId() || ev.GetType() != want.GetType() || cloudevent.ContentType(ev) != cloudevent.ContentType(want) {
					t.Errorf("read back %v, want %v", ev, want)
				}
			}
		})
	}
}

// TestSinkUnroutable: a message no queue is bound for comes back through
// mandatory and fails (not permanently) while its neighbours on the same
// channel, some with the same id (and key), succeed.
func TestSinkUnroutable(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url := testutil.SharedRabbitMQ(t)
	ch := client(t, url)
	q := name(t, "q")
	declare(t, ch, q, "amq.topic", q+".routed", nil)
	s, err := NewSink(sinkConfig(url, "", q+".{type}", false))
	if err != nil {
		t.Fatal(err)
	}
	defer closeSink(t, s)
	var evs []*eventv1.CloudEvent
	for i := range 40 {
		typ := "routed"
		if (i/2)%3 == 1 {
			typ = "nowhere"
		}
		// Pairs share an id, as a retry in flight beside the original would.
		evs = append(evs, jsonEvent(fmt.Sprint(i/2), typ))
	}
	r := newResults()
	s.Send(context.Background(), messages(evs...), r.done)
	routed := 0
	for i, err := range r.wait(t, len(evs)) {
		if evs[i].GetType() == "nowhere" {
			if !errors.Is(err, ErrUnroutable) || bridge.IsPermanent(err) {
				t.Errorf("message %d (unroutable): %v, want a non-permanent ErrUnroutable", i, err)
			}
			continue
		}
		routed++
		if err != nil {
			t.Errorf("message %d (routed): %v", i, err)
		}
	}
	drain(t, ch, q, routed)
}

// TestSinkNack: a queue full with reject-publish makes the broker nack.
func TestSinkNack(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url := testutil.SharedRabbitMQ(t)
	ch := client(t, url)
	q := name(t, "q")
	declare(t, ch, q, "amq.topic", q, amqp.Table{"x-max-length": int32(2), "x-overflow": "reject-publish"})
	s, err := NewSink(sinkConfig(url, "amq.topic", q, false))
	if err != nil {
		t.Fatal(err)
	}
	defer closeSink(t, s)
	var evs []*eventv1.CloudEvent
	for i := range 5 {
		evs = append(evs, jsonEvent(fmt.Sprint(i), "x"))
	}
	r := newResults()
	s.Send(context.Background(), messages(evs...), r.done)
	errs := r.wait(t, len(evs))
	for i := range evs {
		err := errs[i]
		if i < 2 && err != nil {
			t.Errorf("message %d: %v", i, err)
		}
		if i >= 2 && (!errors.Is(err, ErrNacked) || bridge.IsPermanent(err)) {
			t.Errorf("message %d into a full queue: %v, want a non-permanent ErrNacked", i, err)
		}
	}
}

// TestSinkClosed: Send after Close fails at once; a missing exchange fails
// the message and the sink recovers on the next Send.
func TestSinkClosed(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url := testutil.SharedRabbitMQ(t)
	ch := client(t, url)
	q := name(t, "q")
	declare(t, ch, q, "amq.topic", q, nil)

	bad, err := NewSink(sinkConfig(url, name(t, "missing"), q, false))
	if err != nil {
		t.Fatal(err)
	}
	r := newResults()
	bad.Send(context.Background(), messages(jsonEvent("1", "x")), r.done)
	if err := r.wait(t, 1)[0]; !errors.Is(err, ErrConnection) || bridge.IsPermanent(err) {
		t.Errorf("publish to a missing exchange: %v, want a non-permanent ErrConnection", err)
	}
	closeSink(t, bad)

	s, err := NewSink(sinkConfig(url, "amq.topic", q, false))
	if err != nil {
		t.Fatal(err)
	}
	r = newResults()
	s.Send(context.Background(), messages(jsonEvent("1", "x")), r.done)
	if err := r.wait(t, 1)[0]; err != nil {
		t.Fatal(err)
	}
	closeSink(t, s)
	r = newResults()
	s.Send(context.Background(), messages(jsonEvent("2", "x")), r.done)
	if err := r.wait(t, 1)[0]; !errors.Is(err, ErrClosed) {
		t.Errorf("send after close: %v, want ErrClosed", err)
	}
}

// TestBrokerOutage stops the broker in the middle of a stream and starts
// it again later, for the sink, then for the source. The test plays the
// engine: whatever failed is sent again after a while, until every event
// is confirmed; then every event is in the queue (at least once). The
// source's Run ends with an error when the broker goes; a new Run after it
// came back reads the rest and what was not acknowledged.
func TestBrokerOutage(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	url, ctl := testutil.RabbitMQ(t)
	ch := client(t, url)
	declare(t, ch, "outage", "amq.topic", "#", nil)
	ch.Close()

	s, err := NewSink(sinkConfig(url, "", "", false))
	if err != nil {
		t.Fatal(err)
	}
	defer closeSink(t, s)

	const total = 3000
	var (
		mu       sync.Mutex
		ok       = map[int]bool{}
		failed   []int
		failures int
	)
	next := 0
	stopped, restarted := false, false
	outage := make(chan error, 1)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		mu.Lock()
		nOK := len(ok)
		retry := failed
		failed = nil
		mu.Unlock()
		if nOK == total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d confirmed", nOK, total)
		}
		if stopped && !restarted {
			select {
			case err := <-outage:
				if err != nil {
					t.Fatal(err)
				}
				restarted = true
			default:
			}
		}
		if !stopped && nOK >= total/3 {
			// The broker goes down with what was sent last in flight, and stays
			// down for a while (sends fail meanwhile), then comes back
			// with the same data.
			stopped = true
			if err := ctl.Stop(); err != nil {
				t.Fatal(err)
			}
			go func() {
				time.Sleep(500 * time.Millisecond)
				outage <- ctl.Start()
			}()
		}
		batch := retry
		if len(batch) > 200 {
			mu.Lock()
			failed = append(failed, batch[200:]...)
			mu.Unlock()
			batch = batch[:200:200]
		}
		// New events only while fewer than 200 are unsettled (the
		// engine's max_in_flight), so the stop above finds most of the
		// stream still to come.
		for len(batch) < 50 && next < total && next-nOK < 200 {
			batch = append(batch, next)
			next++
		}
		if len(batch) == 0 {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		msgs := make([]bridge.Message, len(batch))
		for k, n := range batch {
			msgs[k] = messages(jsonEvent(fmt.Sprint(n), "outage.test"))[0]
		}
		s.Send(context.Background(), msgs, func(k int, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if bridge.IsPermanent(err) {
					t.Errorf("permanent error in an outage: %v", err)
				}
				failures++
				failed = append(failed, batch[k])
				return
			}
			ok[batch[k]] = true
		})
		if len(retry) > 0 {
			time.Sleep(50 * time.Millisecond) // the engine's retry delay
		}
	}
	if !stopped {
		t.Fatal("the stream ended before the broker was stopped")
	}
	if !restarted {
		if err := <-outage; err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	t.Logf("%d events confirmed, %d failed attempts retried", total, failures)
	mu.Unlock()
	if failures == 0 {
		t.Error("no send failed: the outage did not happen mid-stream")
	}

	ch = client(t, url)
	q, err := ch.QueueDeclarePassive("outage", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, d := range drain(t, ch, "outage", q.Messages) {
		seen[d.MessageId] = true
	}
	for n := range total {
		if !seen[fmt.Sprint(n)] {
			t.Fatalf("event %d was confirmed but is not in the queue (%d distinct of %d messages)", n, len(seen), q.Messages)
		}
	}

	sourceOutage(t, url, ctl)
}

func sourceOutage(t *testing.T, url string, ctl *testutil.RabbitMQServer) {
	const total = 200
	var msgs []amqp.Publishing
	for i := range total {
		msgs = append(msgs, amqp.Publishing{MessageId: fmt.Sprint("src-", i), Body: []byte("{}")})
	}
	declare(t, client(t, url), "outage-src", "", "", nil)
	publishAll(t, url, "outage-src", msgs...)

	src, err := NewSource(sourceConfig(url, "outage-src"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var mu sync.Mutex
	seen := map[string]int{}
	calls := 0
	publish := func(ctx context.Context, recs []bridge.Record) error {
		mu.Lock()
		calls++
		call := calls
		for _, r := range recs {
			seen[r.Event.GetId()]++
		}
		mu.Unlock()
		if call == 3 {
			// The broker goes away before this batch is acknowledged.
			if err := ctl.Stop(); err != nil {
				t.Error(err)
			}
		}
		return nil
	}
	if err := src.Run(context.Background(), 20, publish); err == nil {
		t.Fatal("Run returned nil when the broker stopped")
	} else {
		t.Logf("Run after the broker stopped: %v", err)
	}
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	stop := run(t, src, 20, c.publish)
	testutil.Eventually(t, 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range c.records() {
			seen[r.Event.GetId()]++
		}
		c.mu.Lock()
		c.recs = nil
		c.mu.Unlock()
		return len(seen) == total
	}, "every message read after the outage")
	stop()
	testutil.Eventually(t, 10*time.Second, func() bool { return queueDepth(t, url, "outage-src") == 0 }, "the queue empty")
}
