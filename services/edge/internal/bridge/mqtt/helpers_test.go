package mqtt

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
	"go.uber.org/goleak"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// versions are the protocol versions every broker test runs with.
var versions = []int32{5, 4}

func vname(v int32) string {
	if v == 4 {
		return "mqtt3.1.1"
	}
	return "mqtt5"
}

func sinkConfig(addr string, version int32, mode registryv1.BridgeContentMode, qos int32) bridge.Config {
	return bridge.Config{
		Name: "orders-out",
		Bridge: &registryv1.Bridge{
			Name:      "orders-out",
			Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
			System:    &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://" + addr, ProtocolVersion: version, Qos: qos}},
			Sink:      &registryv1.BridgeSink{ContentMode: mode},
		},
	}
}

func sourceConfig(addr string, version int32, filter string) bridge.Config {
	return bridge.Config{
		Name: "sensors-in",
		Bridge: &registryv1.Bridge{
			Name:      "sensors-in",
			Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE,
			System:    &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://" + addr, ProtocolVersion: version, Topic: filter}},
			Source:    &registryv1.BridgeSource{EventType: "sensors.reading.taken"},
		},
	}
}

// testEvent is event n: JSON data, a time, two extensions.
func testEvent(n int, key string) *eventv1.CloudEvent {
	ev, err := cloudevent.FromBinary(cloudevent.Binary{
		Attributes: map[string]string{
			"specversion": "1.0", "id": fmt.Sprintf("ev-%05d", n), "source": "/billing", "type": "billing.invoice.paid",
			"time": "2026-12-03T12:00:00.5Z", "partitionkey": key, "tenant": "acme",
		},
		ContentType: "application/json",
		Body:        fmt.Appendf(nil, `{"n":%d,"key":%q}`, n, key),
	})
	if err != nil {
		panic(err)
	}
	return ev
}

func messages(from, to int, keys int) []bridge.Message {
	var out []bridge.Message
	for n := from; n < to; n++ {
		key := fmt.Sprintf("k%d", n%keys)
		out = append(out, bridge.Message{Cursor: fmt.Sprintf("%d-0", n), Event: testEvent(n, key), Key: key})
	}
	return out
}

// sendAll sends msgs and waits for every done; it returns the error of
// each (nil: confirmed).
func sendAll(t testing.TB, s bridge.Sink, msgs []bridge.Message) []error {
	t.Helper()
	var errs []error
	ch := make(chan struct{})
	go func() { errs = sendWait(s, msgs); close(ch) }()
	select {
	case <-ch:
	case <-time.After(2 * time.Minute):
		t.Fatal("timed out waiting for every message's done")
	}
	return errs
}

// sendWait is sendAll for a goroutine other than the test's.
func sendWait(s bridge.Sink, msgs []bridge.Message) []error {
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	wg.Add(len(msgs))
	var mu sync.Mutex
	seen := make([]bool, len(msgs))
	s.Send(context.Background(), msgs, func(i int, err error) {
		mu.Lock()
		if seen[i] {
			mu.Unlock()
			panic(fmt.Sprintf("done called twice for %d", i))
		}
		seen[i] = true
		errs[i] = err
		mu.Unlock()
		wg.Done()
	})
	wg.Wait()
	return errs
}

// plain5 is a plain MQTT 5 client of the test (not the code under test).
// With onMsg it receives (auto acknowledged); persistent keeps its session.
func plain5(t testing.TB, addr, clientID string, persistent bool, onMsg func(*paho.Publish)) (*paho.Client, error) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	cc := paho.ClientConfig{ClientID: clientID, Conn: nc}
	if onMsg != nil {
		cc.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			onMsg(pr.Packet)
			return true, nil
		}}
	}
	c := paho.NewClient(cc)
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: !persistent}
	if persistent {
		exp := uint32(3600)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, cp); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		_ = c.Disconnect(&paho.Disconnect{})
		<-c.Done()
	})
	return c, nil
}

func mustPlain5(t testing.TB, addr, clientID string, persistent bool, onMsg func(*paho.Publish)) *paho.Client {
	t.Helper()
	c, err := plain5(t, addr, clientID, persistent, onMsg)
	if err != nil {
		t.Fatalf("plain MQTT 5 client: %v", err)
	}
	return c
}

func subscribe5(t testing.TB, c *paho.Client, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}}); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
}

func publish5(t testing.TB, c *paho.Client, p *paho.Publish) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p.QoS == 0 {
		p.QoS = 1
	}
	if _, err := c.Publish(ctx, p); err != nil {
		t.Fatalf("publish to %s: %v", p.Topic, err)
	}
}

// plain3 is a plain MQTT 3.1.1 client of the test.
func plain3(t testing.TB, addr, clientID string, onMsg func(pahov3.Message)) pahov3.Client {
	t.Helper()
	opts := pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(clientID).SetProtocolVersion(4).SetAutoReconnect(false)
	if onMsg != nil {
		opts.SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) { onMsg(m) })
	}
	c := pahov3.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("plain MQTT 3.1.1 client: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func publish3(t testing.TB, c pahov3.Client, topic string, payload []byte) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish to %s: %v", topic, tok.Error())
	}
}

// collector is a persistent MQTT 5 subscriber that survives broker
// restarts: it reconnects (same client id, clean start false) until the
// test ends, and records the CloudEvents ids (user property or structured
// JSON) it receives, in order per partition key.
type collector struct {
	mu     sync.Mutex
	ids    map[string]int
	byKey  map[string][]string
	topics map[string]bool
}

func collect5(t *testing.T, addr, filter string) *collector {
	t.Helper()
	col := &collector{ids: map[string]int{}, byKey: map[string][]string{}, topics: map[string]bool{}}
	onMsg := func(p *paho.Publish) {
		id, key := "", ""
		if p.Properties != nil && p.Properties.User.Get("id") != "" {
			id, key = p.Properties.User.Get("id"), p.Properties.User.Get("partitionkey")
		} else if ev, err := cloudevent.UnmarshalJSON(p.Payload); err == nil {
			id, key = ev.GetId(), cloudevent.AttributeString(ev.GetAttributes()["partitionkey"])
		}
		col.mu.Lock()
		col.ids[id]++
		col.byKey[key] = append(col.byKey[key], id)
		col.topics[p.Topic] = true
		col.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	first := make(chan struct{})
	go func() {
		defer close(done)
		once := sync.Once{}
		for ctx.Err() == nil {
			nc, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				sleep(ctx, 20*time.Millisecond)
				continue
			}
			c := paho.NewClient(paho.ClientConfig{ClientID: "test-collector", Conn: nc, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) { onMsg(pr.Packet); return true, nil },
			}})
			exp := uint32(3600)
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = c.Connect(cctx, &paho.Connect{ClientID: "test-collector", KeepAlive: 30, Properties: &paho.ConnectProperties{SessionExpiryInterval: &exp}})
			if err == nil {
				_, err = c.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
			}
			ccancel()
			if err != nil {
				_ = c.Disconnect(&paho.Disconnect{})
				<-c.Done()
				sleep(ctx, 20*time.Millisecond)
				continue
			}
			once.Do(func() { close(first) })
			select {
			case <-c.Done():
			case <-ctx.Done():
				_ = c.Disconnect(&paho.Disconnect{})
				<-c.Done()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-first:
	case <-time.After(20 * time.Second):
		t.Fatal("collector could not subscribe")
	}
	return col
}

func (c *collector) has(ids []string) (missing int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		if c.ids[id] == 0 {
			missing++
		}
	}
	return missing
}

// recorder is a PublishFunc that keeps what it was given; fail, when
// set, decides per call (1, 2, ...) whether that call fails.
type recorder struct {
	mu    sync.Mutex
	recs  []bridge.Record
	calls int
	fail  func(call int, recs []bridge.Record) error
}

func (r *recorder) publish(ctx context.Context, recs []bridge.Record) error {
	r.mu.Lock()
	r.calls++
	call := r.calls
	fail := r.fail
	r.mu.Unlock()
	if fail != nil {
		if err := fail(call, recs); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.recs = append(r.recs, recs...)
	r.mu.Unlock()
	return nil
}

func (r *recorder) snapshot() []bridge.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bridge.Record(nil), r.recs...)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.recs)
}

// run starts src.Run and returns a function that waits for its result;
// the test's end closes src.
func run(t *testing.T, src *Source, batch int, publish bridge.PublishFunc) (wait func() error) {
	t.Helper()
	subscribed := make(chan struct{})
	var once sync.Once
	src.subscribed = func() { once.Do(func() { close(subscribed) }) }
	res := make(chan error, 1)
	go func() { res <- src.Run(context.Background(), batch, publish) }()
	t.Cleanup(func() { _ = src.Close() })
	select {
	case <-subscribed:
	case err := <-res:
		t.Fatalf("Run returned before subscribing: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not subscribe")
	}
	var got error
	var gotOnce sync.Once
	return func() error {
		gotOnce.Do(func() {
			select {
			case got = <-res:
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return")
			}
		})
		return got
	}
}
