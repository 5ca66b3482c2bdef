package kafka

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(testutil.StoppingSpares(m))
}

// testTimeout bounds every wait of these tests on Kafka; it is a hang
// guard, not an assertion about speed.
const testTimeout = 60 * time.Second

// cluster is an in-process kfake Kafka broker on a free loopback port,
// its data in a temporary directory so that it can be stopped and started
// again on the same port with what it held.
type cluster struct {
	t    testing.TB
	addr string
	port int
	dir  string
	opts []kfake.Opt

	mu sync.Mutex
	c  *kfake.Cluster
}

// startCluster starts a one-broker cluster, seeded with topics of
// partitions partitions each; it is stopped when the test ends.
func startCluster(t testing.TB, partitions int32, topics []string, opts ...kfake.Opt) *cluster {
	t.Helper()
	addr := testutil.FreeAddr(t)
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	k := &cluster{t: t, addr: addr, port: port, dir: t.TempDir()}
	k.opts = append([]kfake.Opt{
		kfake.Ports(port),
		kfake.DataDir(k.dir),
		kfake.SeedTopics(partitions, topics...),
		kfake.GroupMinSessionTimeout(time.Second),
	}, opts...)
	k.start()
	t.Cleanup(k.stop)
	return k
}

// start (re)starts the broker on its port.
func (k *cluster) start() {
	k.t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.c != nil {
		return
	}
	var err error
	deadline := time.Now().Add(testTimeout)
	for {
		// The port may still be held by the stopped broker's sockets
		// for a moment.
		k.c, err = kfake.NewCluster(k.opts...)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		k.t.Fatalf("start kfake on %s: %v", k.addr, err)
	}
}

// stop stops the broker; its data stays in its directory.
func (k *cluster) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.c != nil {
		k.c.Close()
		k.c = nil
	}
}

// kafkaCfg is a bridge of direction dir on topic of k.
func kafkaCfg(addr, topic string, dir registryv1.BridgeDirection, structured bool) bridge.Config {
	b := &registryv1.Bridge{
		Name:      "orders",
		Direction: dir,
		System:    &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: []string{addr}, Topic: topic}},
	}
	switch dir {
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK:
		b.Sink = &registryv1.BridgeSink{Types: []string{"*"}}
		if structured {
			b.Sink.ContentMode = registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED
		}
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE:
		b.Source = &registryv1.BridgeSource{EventType: "kafka.record.received"}
	}
	return bridge.Config{Bridge: b, Name: "orders"}
}

// testSink builds a sink with a short delivery timeout, closed when the
// test ends.
func testSink(t testing.TB, cfg bridge.Config, o options) *Sink {
	t.Helper()
	if o.deliveryTimeout == 0 {
		o.deliveryTimeout = 2 * time.Second
	}
	s, err := newSink(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	})
	return s
}

// testEvent is event i of key: JSON data holding both, a subject and a
// time.
func testEvent(i int, key string) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id:          fmt.Sprintf("evt_%05d", i),
		Source:      "/orders",
		SpecVersion: "1.0",
		Type:        "orders.order.placed",
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
			"partitionkey":    {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: key}},
			"subject":         {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "order-" + strconv.Itoa(i)}},
			"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(time.Date(2026, 12, 3, 12, 0, 0, i*1000, time.UTC))}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"n":%d,"key":%q,"note":"caf\u00e9"}`, i, key)},
	}
}

// messages are n test events over keys keys (event i has key k<i%keys>).
func messages(from, n, keys int) []bridge.Message {
	msgs := make([]bridge.Message, n)
	for j := range msgs {
		i := from + j
		key := fmt.Sprintf("k%d", i%keys)
		msgs[j] = bridge.Message{Cursor: fmt.Sprintf("%d-0", i+1), Event: testEvent(i, key), Key: key}
	}
	return msgs
}

// sendAll sends msgs in batches of batch and returns each one's done
// error, once every done came.
func sendAll(t testing.TB, s bridge.Sink, msgs []bridge.Message, batch int) []error {
	t.Helper()
	return sendAllCtx(t, context.Background(), s, msgs, batch)
}

func sendAllCtx(t testing.TB, ctx context.Context, s bridge.Sink, msgs []bridge.Message, batch int) []error {
	t.Helper()
	errs := make([]error, len(msgs))
	calls := make([]int, len(msgs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(len(msgs))
	for from := 0; from < len(msgs); from += batch {
		part := msgs[from:min(from+batch, len(msgs))]
		base := from
		s.Send(ctx, part, func(i int, err error) {
			mu.Lock()
			errs[base+i] = err
			calls[base+i]++
			mu.Unlock()
			wg.Done()
		})
	}
	waitGroup(t, &wg, "every done of the sink")
	for i, c := range calls {
		if c != 1 {
			t.Fatalf("done(%d) called %d times", i, c)
		}
	}
	return errs
}

func waitGroup(t testing.TB, wg *sync.WaitGroup, what string) {
	t.Helper()
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("waited %v for %s", testTimeout, what)
	}
}

// readAll reads topic from the beginning with a plain franz-go consumer
// until it has n records.
func readAll(t testing.TB, addr, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records of %s", len(out), n, topic)
		}
		f.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		out = append(out, f.Records()...)
	}
	return out
}

// produce writes recs with a plain franz-go producer.
func produce(t testing.TB, addr string, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// headers maps a record's headers (the first of each name).
func headers(r *kgo.Record) map[string]string {
	h := map[string]string{}
	for _, x := range r.Headers {
		if _, ok := h[x.Key]; !ok {
			h[x.Key] = string(x.Value)
		}
	}
	return h
}

func decodeB64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("base64 %q: %v", s, err)
	}
	return b
}
