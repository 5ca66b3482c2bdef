package mqtt

import (
	"context"
	"errors"
	"fmt"
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
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func newSink(t *testing.T, cfg bridge.Config) *Sink {
	t.Helper()
	s, err := NewSink(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	})
	return s
}

func allNil(t *testing.T, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// TestSinkBinaryMQTT5 reads what the sink published with a plain client:
// attributes as user properties without prefix, datacontenttype as the
// Content Type, data as the payload, topic herald/<type with slashes>.
func TestSinkBinaryMQTT5(t *testing.T) {
	for _, qos := range []int32{1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			addr, _ := testutil.Mosquitto(t)
			got := make(chan *paho.Publish, 10)
			sub := mustPlain5(t, addr, "reader", false, func(p *paho.Publish) { got <- p })
			subscribe5(t, sub, "herald/#", 2)

			s := newSink(t, sinkConfig(addr, 5, registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_UNSPECIFIED, qos))
			msgs := messages(0, 3, 3)
			allNil(t, sendAll(t, s, msgs))
			byID := map[string]bridge.Message{}
			for _, m := range msgs {
				byID[m.Event.GetId()] = m
			}
			for i := range msgs {
				var p *paho.Publish
				select {
				case p = <-got:
				case <-time.After(20 * time.Second):
					t.Fatalf("message %d not received", i)
				}
				if p.Properties == nil {
					t.Fatal("no properties")
				}
				m, ok := byID[p.Properties.User.Get("id")]
				if !ok {
					t.Fatalf("received unknown id %q", p.Properties.User.Get("id"))
				}
				ev := m.Event
				if p.Topic != "herald/billing/invoice/paid" {
					t.Errorf("topic %q", p.Topic)
				}
				if p.QoS != byte(qos) {
					t.Errorf("qos %d, want %d", p.QoS, qos)
				}
				if p.Properties == nil {
					t.Fatal("no properties")
				}
				if p.Properties.ContentType != "application/json" {
					t.Errorf("content type %q", p.Properties.ContentType)
				}
				want := map[string]string{
					"specversion": "1.0", "id": ev.GetId(), "source": "/billing", "type": "billing.invoice.paid",
					"time": "2026-12-03T12:00:00.5Z", "partitionkey": m.Key, "tenant": "acme",
				}
				props := map[string]string{}
				for _, u := range p.Properties.User {
					props[u.Key] = u.Value
				}
				if fmt.Sprint(props) != fmt.Sprint(want) {
					t.Errorf("user properties\n got %v\nwant %v", props, want)
				}
				if p.Properties.User[0].Key != "specversion" {
					t.Errorf("first user property %q, want specversion", p.Properties.User[0].Key)
				}
				if string(p.Payload) != ev.GetTextData() {
					t.Errorf("payload %q, want %q", p.Payload, ev.GetTextData())
				}
			}
		})
	}
}

// TestSinkStructured: MQTT 5 with content_mode structured, and MQTT 3.1.1
// whatever the mode, carry the event as JSON; read back it is the same
// event.
func TestSinkStructured(t *testing.T) {
	cases := []struct {
		name    string
		version int32
		mode    registryv1.BridgeContentMode
		qos     int32
	}{
		{"mqtt5", 5, registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED, 1},
		{"mqtt3.1.1-binary-asked", 4, registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_UNSPECIFIED, 1},
		{"mqtt3.1.1-qos2", 4, registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := testutil.Mosquitto(t)
			type msg struct {
				topic   string
				payload []byte
				ct      string
				user    int
			}
			got := make(chan msg, 10)
			if tc.version == 5 {
				sub := mustPlain5(t, addr, "reader", false, func(p *paho.Publish) {
					m := msg{topic: p.Topic, payload: p.Payload}
					if p.Properties != nil {
						m.ct, m.user = p.Properties.ContentType, len(p.Properties.User)
					}
					got <- m
				})
				subscribe5(t, sub, "herald/#", 2)
			} else {
				sub := plain3(t, addr, "reader", func(p pahov3.Message) { got <- msg{topic: p.Topic(), payload: p.Payload()} })
				if tok := sub.Subscribe("herald/#", 2, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Fatal(tok.Error())
				}
			}
			s := newSink(t, sinkConfig(addr, tc.version, tc.mode, tc.qos))
			msgs := messages(0, 3, 2)
			byID := map[string]bridge.Message{}
			for _, m := range msgs {
				byID[m.Event.GetId()] = m
			}
			allNil(t, sendAll(t, s, msgs))
			for i := range msgs {
				var m msg
				select {
				case m = <-got:
				case <-time.After(20 * time.Second):
					t.Fatalf("message %d not received", i)
				}
				if m.topic != "herald/billing/invoice/paid" {
					t.Errorf("topic %q", m.topic)
				}
				wantCT := ""
				if tc.version == 5 {
					wantCT = "application/cloudevents+json"
				}
				if m.ct != wantCT || m.user != 0 {
					t.Errorf("content type %q and %d user properties, want %q and none", m.ct, m.user, wantCT)
				}
				ev, err := cloudevent.UnmarshalJSON(m.payload)
				if err != nil {
					t.Fatalf("payload %s: %v", m.payload, err)
				}
				if want := byID[ev.GetId()].Event; !proto.Equal(ev, want) {
					t.Errorf("event read back\n got %v\nwant %v", ev, want)
				}
			}
		})
	}
}

// TestSinkTopicTemplate: {type} anywhere in the template; a type that
// makes an invalid topic name is a permanent error.
func TestSinkTopicTemplate(t *testing.T) {
	addr, _ := testutil.Mosquitto(t)
	got := make(chan string, 10)
	sub := mustPlain5(t, addr, "reader", false, func(p *paho.Publish) { got <- p.Topic })
	subscribe5(t, sub, "#", 1)
	cfg := sinkConfig(addr, 5, 0, 1)
	cfg.Bridge.GetMqtt().Topic = "acme/{type}/events"
	s := newSink(t, cfg)
	msgs := messages(0, 2, 1)
	msgs[1].Event.Type = "bad.+.type"
	errs := sendAll(t, s, msgs)
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	if !bridge.IsPermanent(errs[1]) {
		t.Errorf("a wildcard in the topic: %v, want a permanent error", errs[1])
	}
	select {
	case topic := <-got:
		if topic != "acme/billing/invoice/paid/events" {
			t.Errorf("topic %q", topic)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("nothing received")
	}
}

// TestSinkOrderPerKey: many messages over a few keys arrive per key in the
// order they were sent.
func TestSinkOrderPerKey(t *testing.T) {
	for _, v := range versions {
		t.Run(vname(v), func(t *testing.T) {
			addr, _ := testutil.Mosquitto(t)
			col := collect5(t, addr, "herald/#")
			s := newSink(t, sinkConfig(addr, v, 0, 1))
			msgs := messages(0, 600, 5)
			allNil(t, sendAll(t, s, msgs))
			ids := make([]string, len(msgs))
			for i, m := range msgs {
				ids[i] = m.Event.GetId()
			}
			testutil.Eventually(t, 30*time.Second, func() bool { return col.has(ids) == 0 }, "every message received")
			col.mu.Lock()
			defer col.mu.Unlock()
			for key, got := range col.byKey {
				for i := 1; i < len(got); i++ {
					if got[i] <= got[i-1] {
						t.Fatalf("key %s: %s after %s", key, got[i], got[i-1])
					}
				}
			}
		})
	}
}

// TestSinkBrokerOutage stops the broker in the middle of a stream and
// starts it again; the test sends again what failed, as the engine would,
// until everything is confirmed: every event reaches the subscriber.
func TestSinkBrokerOutage(t *testing.T) {
	for _, v := range versions {
		t.Run(vname(v), func(t *testing.T) {
			addr, ctl := testutil.Mosquitto(t)
			col := collect5(t, addr, "herald/#")
			s := newSink(t, sinkConfig(addr, v, 0, 1))
			all := messages(0, 3000, 50)

			var mu sync.Mutex
			confirmed, failures, whileDown := 0, 0, 0
			var permanent error
			sent := make(chan struct{}, 1)
			engine := make(chan struct{})
			go func() {
				defer close(engine)
				pending := all
				for round := 0; len(pending) > 0 && round < 500; round++ {
					var next []bridge.Message
					for start := 0; start < len(pending); start += 100 {
						batch := pending[start:min(start+100, len(pending))]
						errs := sendWait(s, batch)
						for i, err := range errs {
							mu.Lock()
							if err == nil {
								confirmed++
							} else {
								failures++
								if strings.Contains(err.Error(), "not connected") {
									whileDown++
								}
								if bridge.IsPermanent(err) {
									permanent = err
								}
								next = append(next, batch[i])
							}
							mu.Unlock()
						}
						select {
						case sent <- struct{}{}:
						default:
						}
					}
					pending = next
					if len(pending) > 0 {
						time.Sleep(50 * time.Millisecond) // the engine's retry delay
					}
				}
			}()
			testutil.Eventually(t, 30*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return confirmed >= 500
			}, "first messages confirmed")
			ctl.Stop()
			testutil.Eventually(t, 60*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return failures > 0 && whileDown > 0
			}, "sends fail, in flight and then for want of a connection, while the broker is down")
			ctl.Start()
			select {
			case <-engine:
			case <-time.After(3 * time.Minute):
				t.Fatal("the engine's loop did not end")
			}
			mu.Lock()
			if permanent != nil {
				t.Errorf("a permanent error in an outage: %v", permanent)
			}
			if confirmed != len(all) {
				t.Fatalf("%d of %d confirmed", confirmed, len(all))
			}
			t.Logf("%d failures (%d for want of a connection) were sent again", failures, whileDown)
			mu.Unlock()
			ids := make([]string, len(all))
			for i, m := range all {
				ids[i] = m.Event.GetId()
			}
			testutil.Eventually(t, 60*time.Second, func() bool { return col.has(ids) == 0 }, "every event received after the outage")
		})
	}
}

// TestSinkClose: Close flushes what was sent; Send after Close fails at
// once; a sink whose broker is gone fails its messages (not permanently)
// and closes within its context.
func TestSinkClose(t *testing.T) {
	addr, ctl := testutil.Mosquitto(t)
	s, err := NewSink(sinkConfig(addr, 5, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	msgs := messages(0, 200, 7)
	wg.Add(len(msgs))
	var mu sync.Mutex
	var failed []error
	s.Send(context.Background(), msgs, func(i int, err error) {
		if err != nil {
			mu.Lock()
			failed = append(failed, err)
			mu.Unlock()
		}
		wg.Done()
	})
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d failed, first: %v", len(failed), failed[0])
	}
	errs := sendAll(t, s, messages(0, 1, 1))
	if !errors.Is(errs[0], errClosed) {
		t.Errorf("Send after Close: %v", errs[0])
	}

	ctl.Stop()
	s2 := newSink(t, sinkConfig(addr, 4, 0, 1))
	errs = sendAll(t, s2, messages(0, 3, 3))
	for _, err := range errs {
		if err == nil || bridge.IsPermanent(err) || !strings.Contains(err.Error(), "not connected") {
			t.Errorf("broker down: %v, want a non-permanent not connected error", err)
		}
	}
}

// TestSinkTooLarge: a message over the broker's maximum packet size (MQTT
// 5 CONNACK) fails for good, and the next one goes through.
func TestSinkTooLarge(t *testing.T) {
	addr, _ := testutil.MosquittoWith(t, "max_packet_size 2048")
	s := newSink(t, sinkConfig(addr, 5, 0, 1))
	msgs := messages(0, 2, 1)
	msgs[0].Event.Data = &eventv1.CloudEvent_TextData{TextData: `"` + strings.Repeat("x", 4096) + `"`}
	errs := sendAll(t, s, msgs)
	if !bridge.IsPermanent(errs[0]) {
		t.Errorf("too large: %v, want a permanent error", errs[0])
	}
	if errs[1] != nil {
		t.Errorf("the next message: %v", errs[1])
	}
}
