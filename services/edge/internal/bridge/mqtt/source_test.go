package mqtt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
	"google.golang.org/protobuf/proto"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

func newSource(t *testing.T, cfg bridge.Config) *Source {
	t.Helper()
	s, err := NewSource(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// producer publishes test messages with a plain client of either version.
type producer struct {
	t   *testing.T
	v5  *paho.Client
	v3  pahov3.Client
	qos byte // 1 unless set
}

func newProducer(t *testing.T, addr string, version int32) *producer {
	p := &producer{t: t}
	if version == 5 {
		p.v5 = mustPlain5(t, addr, "producer", false, nil)
	} else {
		p.v3 = plain3(t, addr, "producer", nil)
	}
	return p
}

// raw publishes payload to topic with no properties.
func (p *producer) raw(topic string, payload []byte) {
	p.t.Helper()
	qos := max(p.qos, 1)
	if p.v5 != nil {
		publish5(p.t, p.v5, &paho.Publish{Topic: topic, Payload: payload, QoS: qos})
		return
	}
	tok := p.v3.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		p.t.Fatalf("publish to %s: %v", topic, tok.Error())
	}
}

func waitRecords(t *testing.T, r *recorder, n int) []bridge.Record {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() bool { return r.count() >= n }, fmt.Sprintf("%d records published", n))
	return r.snapshot()
}

func structuredJSON(t *testing.T, n int) ([]byte, *eventv1.CloudEvent) {
	ev := testEvent(n, "k")
	b, err := cloudevent.MarshalJSON(ev)
	if err != nil {
		t.Fatal(err)
	}
	return b, ev
}

// TestSourceShapesMQTT5: every shape an MQTT 5 producer may send becomes
// the right event.
func TestSourceShapesMQTT5(t *testing.T) {
	addr, _ := testutil.Mosquitto(t)
	src := newSource(t, sourceConfig(addr, 5, "sensors/#"))
	rec := &recorder{}
	run(t, src, 10, rec.publish)
	p := mustPlain5(t, addr, "producer", false, nil)

	// Binary: attributes as user properties, Content Type, data.
	bin := testEvent(1, "room-1")
	b := cloudevent.ToBinary(bin)
	var user paho.UserProperties
	for k, v := range b.Attributes {
		user.Add(k, v)
	}
	user.Add("X-Not-An-Attribute", "ignored")
	publish5(t, p, &paho.Publish{Topic: "sensors/binary", Payload: b.Body, Properties: &paho.PublishProperties{ContentType: b.ContentType, User: user}})
	// Structured with its content type.
	sj, sev := structuredJSON(t, 2)
	publish5(t, p, &paho.Publish{Topic: "sensors/structured", Payload: sj, Properties: &paho.PublishProperties{ContentType: "application/cloudevents+json; charset=utf-8"}})
	// Structured without a content type (as from an MQTT 3.1.1 producer).
	sj3, sev3 := structuredJSON(t, 3)
	publish5(t, p, &paho.Publish{Topic: "sensors/structured3", Payload: sj3})
	// Not CloudEvents: JSON, bytes with a content type, one with an id.
	publish5(t, p, &paho.Publish{Topic: "sensors/room 1/temp", Payload: []byte(`{"celsius":21.5}`)})
	publish5(t, p, &paho.Publish{Topic: "sensors/blob", Payload: []byte{0xff, 0x00, 0x01}, Properties: &paho.PublishProperties{ContentType: "application/x-thing"}})
	publish5(t, p, &paho.Publish{Topic: "sensors/withid", Payload: []byte("hello"), Properties: &paho.PublishProperties{ContentType: "text/plain", User: paho.UserProperties{{Key: "id", Value: "reading-42"}}}})

	recs := waitRecords(t, rec, 6)
	for i, r := range recs {
		if r.Err != nil {
			t.Fatalf("record %d (%s): %v", i, r.Position, r.Err)
		}
	}
	if !proto.Equal(recs[0].Event, bin) {
		t.Errorf("binary\n got %v\nwant %v", recs[0].Event, bin)
	}
	if !proto.Equal(recs[1].Event, sev) {
		t.Errorf("structured\n got %v\nwant %v", recs[1].Event, sev)
	}
	if !proto.Equal(recs[2].Event, sev3) {
		t.Errorf("structured without content type\n got %v\nwant %v", recs[2].Event, sev3)
	}
	cfg := sourceConfig(addr, 5, "sensors/#")
	want := []*eventv1.CloudEvent{
		bridge.NewEvent(cfg, hashID("sensors/room 1/temp", []byte(`{"celsius":21.5}`)), "mqtt://sensors/room 1/temp", "", []byte(`{"celsius":21.5}`), time.Time{}),
		bridge.NewEvent(cfg, hashID("sensors/blob", []byte{0xff, 0x00, 0x01}), "mqtt://sensors/blob", "application/x-thing", []byte{0xff, 0x00, 0x01}, time.Time{}),
		bridge.NewEvent(cfg, "reading-42", "mqtt://sensors/withid", "text/plain", []byte("hello"), time.Time{}),
	}
	for i, w := range want {
		got := recs[3+i].Event
		if !proto.Equal(got, w) {
			t.Errorf("record %d\n got %v\nwant %v", 3+i, got, w)
		}
	}
	if got := recs[3].Event; got.GetType() != "sensors.reading.taken" || !strings.HasPrefix(got.GetId(), "mqtt-") || cloudevent.ContentType(got) != "application/json" {
		t.Errorf("raw JSON: %v", got)
	}
	if !strings.Contains(recs[0].Position, "sensors/binary") || string(recs[3].Raw) != `{"celsius":21.5}` {
		t.Errorf("position %q, raw %q", recs[0].Position, recs[3].Raw)
	}
}

// TestSourceShapesMQTT311: structured JSON with specversion is read as an
// event; anything else becomes one of the bridge's type.
func TestSourceShapesMQTT311(t *testing.T) {
	addr, _ := testutil.Mosquitto(t)
	src := newSource(t, sourceConfig(addr, 4, "sensors/+/temp"))
	rec := &recorder{}
	run(t, src, 10, rec.publish)
	p := plain3(t, addr, "producer", nil)

	sj, sev := structuredJSON(t, 7)
	publish3(t, p, "sensors/a/temp", sj)
	publish3(t, p, "sensors/b/temp", []byte(`{"celsius":19}`))
	publish3(t, p, "sensors/c/temp", []byte("19.5 C"))
	publish3(t, p, "other/topic", []byte("not for us"))
	publish3(t, p, "sensors/d/temp", []byte(`[1,2]`))

	recs := waitRecords(t, rec, 4)
	for i, r := range recs {
		if r.Err != nil {
			t.Fatalf("record %d: %v", i, r.Err)
		}
	}
	if !proto.Equal(recs[0].Event, sev) {
		t.Errorf("structured\n got %v\nwant %v", recs[0].Event, sev)
	}
	cfg := sourceConfig(addr, 4, "sensors/+/temp")
	for i, tc := range []struct{ topic, payload, ct string }{
		{"sensors/b/temp", `{"celsius":19}`, "application/json"},
		{"sensors/c/temp", "19.5 C", "application/octet-stream"},
		{"sensors/d/temp", `[1,2]`, "application/json"},
	} {
		want := bridge.NewEvent(cfg, hashID(tc.topic, []byte(tc.payload)), "mqtt://"+tc.topic, "", []byte(tc.payload), time.Time{})
		if got := recs[1+i].Event; !proto.Equal(got, want) || cloudevent.ContentType(got) != tc.ct {
			t.Errorf("%s\n got %v\nwant %v", tc.topic, got, want)
		}
	}
	if len(recs) != 4 {
		t.Errorf("%d records, want 4 (the other topic is not subscribed)", len(recs))
	}
}

// TestSourceGarbage: unreadable messages become records with Err (and
// their payload), and the flow goes on.
func TestSourceGarbage(t *testing.T) {
	for _, v := range versions {
		t.Run(vname(v), func(t *testing.T) {
			addr, _ := testutil.Mosquitto(t)
			src := newSource(t, sourceConfig(addr, v, "in/#"))
			rec := &recorder{}
			run(t, src, 3, rec.publish)
			p := newProducer(t, addr, v)
			bad := [][]byte{
				[]byte(`{"specversion":"1.0","id":"x"}`),                        // no source, no type
				[]byte(`{"specversion":"1.0","id":"x","source":"/s","type":1}`), // type not a string
			}
			if v == 5 {
				publish5(t, p.v5, &paho.Publish{Topic: "in/ce", Payload: []byte("not json"), Properties: &paho.PublishProperties{ContentType: "application/cloudevents+json"}})
				publish5(t, p.v5, &paho.Publish{Topic: "in/ce", Payload: []byte("{}"), Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "specversion", Value: "1.0"}}}})
				publish5(t, p.v5, &paho.Publish{Topic: "in/ce", Payload: []byte(`[]`), Properties: &paho.PublishProperties{ContentType: "application/cloudevents-batch+json"}})
			}
			for _, b := range bad {
				p.raw("in/ce", b)
			}
			for i := range 5 {
				p.raw("in/ok", fmt.Appendf(nil, `{"n":%d}`, i))
			}
			nbad := len(bad)
			if v == 5 {
				nbad += 3
			}
			recs := waitRecords(t, rec, nbad+5)
			for i, r := range recs {
				if i < nbad {
					if r.Err == nil || r.Event != nil || len(r.Raw) == 0 {
						t.Errorf("garbage %d: err %v, event %v, raw %q", i, r.Err, r.Event, r.Raw)
					}
					continue
				}
				if r.Err != nil || r.Event.GetTextData() != fmt.Sprintf(`{"n":%d}`, i-nbad) {
					t.Errorf("record %d after the garbage: %v %v", i, r.Err, r.Event)
				}
			}
		})
	}
}

// TestSourcePublishFailsOnce: a batch the router did not take is offered
// again, on the same connection; nothing is lost.
func TestSourcePublishFailsOnce(t *testing.T) {
	for _, v := range versions {
		t.Run(vname(v), func(t *testing.T) {
			addr, _ := testutil.Mosquitto(t)
			src := newSource(t, sourceConfig(addr, v, "in/#"))
			var mu sync.Mutex
			var firstBatch []string
			rec := &recorder{fail: func(call int, recs []bridge.Record) error {
				if call != 1 {
					return nil
				}
				mu.Lock()
				for _, r := range recs {
					firstBatch = append(firstBatch, r.Event.GetId())
				}
				mu.Unlock()
				return errors.New("router unavailable")
			}}
			run(t, src, 5, rec.publish)
			p := newProducer(t, addr, v)
			var want []string
			for i := range 40 {
				payload := fmt.Appendf(nil, `{"n":%d}`, i)
				p.raw("in/x", payload)
				want = append(want, hashID("in/x", payload))
			}
			recs := waitRecords(t, rec, 40)
			var got []string
			for _, r := range recs {
				got = append(got, r.Event.GetId())
			}
			if !slices.Equal(got[:40], want) {
				t.Errorf("published\n%v\nwant\n%v", got, want)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(firstBatch) == 0 || !slices.Equal(firstBatch, got[:len(firstBatch)]) {
				t.Errorf("the failed batch %v was not offered again first (got %v)", firstBatch, got)
			}
		})
	}
}

// TestSourceCrashRedelivery: a source that stops before its batch was
// published (so nothing was acknowledged) leaves the messages in the
// broker's session; a new Source of the same bridge gets them, with the
// same ids, and what was sent meanwhile.
func TestSourceCrashRedelivery(t *testing.T) {
	for _, v := range versions {
		for _, qos := range []byte{1, 2} {
			t.Run(fmt.Sprintf("%s/qos%d", vname(v), qos), func(t *testing.T) {
				testCrashRedelivery(t, v, qos)
			})
		}
	}
}

func testCrashRedelivery(t *testing.T, v int32, qos byte) {
	addr, _ := testutil.Mosquitto(t)
	cfg := sourceConfig(addr, v, "in/#")
	cfg.Bridge.GetMqtt().Qos = int32(qos)
	src1 := newSource(t, cfg)
	offered := make(chan []string, 100)
	stuck := func(ctx context.Context, recs []bridge.Record) error {
		var ids []string
		for _, r := range recs {
			ids = append(ids, r.Event.GetId())
		}
		offered <- ids
		return errors.New("router down")
	}
	wait1 := run(t, src1, 10, stuck)
	p := newProducer(t, addr, v)
	p.qos = qos
	var want []string
	for i := range 30 {
		payload := fmt.Appendf(nil, "reading %d", i)
		p.raw("in/x", payload)
		want = append(want, hashID("in/x", payload))
	}
	var first []string
	select {
	case first = <-offered:
	case <-time.After(20 * time.Second):
		t.Fatal("nothing offered")
	}
	if err := src1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := wait1(); !errors.Is(err, errClosed) {
		t.Errorf("Run after Close: %v", err)
	}
	for i := range 10 {
		payload := fmt.Appendf(nil, "later %d", i)
		p.raw("in/x", payload)
		want = append(want, hashID("in/x", payload))
	}

	src2 := newSource(t, cfg)
	rec := &recorder{}
	run(t, src2, 10, rec.publish)
	recs := waitRecords(t, rec, len(want))
	var got []string
	for _, r := range recs {
		got = append(got, r.Event.GetId())
	}
	if !slices.Equal(got[:len(first)], first) {
		t.Errorf("redelivered first %v, want the unacknowledged %v", got[:len(first)], first)
	}
	for _, id := range want {
		if !slices.Contains(got, id) {
			t.Fatalf("%s lost (got %v)", id, got)
		}
	}
}

// TestSourceBrokerRestart: Run returns when the broker goes away; after
// it is back, Run again gets what was not acknowledged and what was
// published meanwhile to the session.
func TestSourceBrokerRestart(t *testing.T) {
	for _, v := range versions {
		t.Run(vname(v), func(t *testing.T) {
			addr, ctl := testutil.Mosquitto(t)
			src := newSource(t, sourceConfig(addr, v, "in/#"))
			release := make(chan struct{})
			var mu sync.Mutex
			blocked := 0
			rec := &recorder{fail: func(call int, recs []bridge.Record) error {
				if call == 2 {
					mu.Lock()
					blocked = len(recs)
					mu.Unlock()
					<-release // the router hangs while the broker goes away
					return errors.New("router timeout")
				}
				return nil
			}}
			wait := run(t, src, 1, rec.publish)
			p := newProducer(t, addr, v)
			p.raw("in/x", []byte("one"))
			p.raw("in/x", []byte("two"))
			testutil.Eventually(t, 20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return blocked > 0 }, "second batch offered")
			ctl.Stop()
			close(release)
			if err := wait(); err == nil || errors.Is(err, errClosed) {
				t.Fatalf("Run with the broker gone: %v, want the connection's error", err)
			}
			ctl.Start()
			p2 := newProducer(t, addr, v)
			p2.raw("in/x", []byte("three"))
			run(t, src, 10, rec.publish)
			recs := waitRecords(t, rec, 3)
			var got []string // a repeat (an acknowledgement lost in the stop) is the router's dedupe's
			for _, r := range recs {
				if !slices.Contains(got, string(r.Raw)) {
					got = append(got, string(r.Raw))
				}
			}
			if !slices.Equal(got, []string{"one", "two", "three"}) {
				t.Errorf("got %q", got)
			}
		})
	}
}

func TestSourceLag(t *testing.T) {
	src := newSource(t, sourceConfig("127.0.0.1:1", 5, "a/#"))
	if n, err := src.Lag(context.Background()); n != -1 || err != nil {
		t.Errorf("Lag = %d, %v", n, err)
	}
}
