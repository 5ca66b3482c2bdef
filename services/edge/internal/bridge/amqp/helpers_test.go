package amqp

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.StopSharedRabbitMQ()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

var nonName = regexp.MustCompile(`[^a-z0-9]+`)

// name is a queue or exchange name of the test's own on a shared node.
func name(t testing.TB, suffix string) string {
	return strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-") + "-" + suffix
}

// withoutPassword turns amqp://guest:guest@... into amqp://guest@...: the
// bridge's URL, its password being the secret.
func withoutPassword(url string) string { return strings.Replace(url, "guest:guest@", "guest@", 1) }

func sinkConfig(url, exchange, key string, structured bool) bridge.Config {
	mode := registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_UNSPECIFIED
	if structured {
		mode = registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED
	}
	return bridge.Config{
		Name:   "test-sink",
		Secret: "guest",
		Bridge: &registryv1.Bridge{
			Name:      "test-sink",
			Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
			System:    &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: withoutPassword(url), Exchange: exchange, RoutingKey: key}},
			Sink:      &registryv1.BridgeSink{ContentMode: mode},
		},
	}
}

func sourceConfig(url, queue string) bridge.Config {
	return bridge.Config{
		Name:   "test-source",
		Secret: "guest",
		Bridge: &registryv1.Bridge{
			Name:      "test-source",
			Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE,
			System:    &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: withoutPassword(url), Queue: queue}},
			Source:    &registryv1.BridgeSource{EventType: "legacy.order.placed"},
		},
	}
}

// client is a plain amqp091 connection and channel, closed at the end.
func client(t testing.TB, url string) *amqp.Channel {
	t.Helper()
	c, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	ch, err := c.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// declare makes a durable, empty queue bound to exchange with key (empty
// also when the test runs again on the same node, -count=2).
func declare(t testing.TB, ch *amqp.Channel, queue, exchange, key string, args amqp.Table) {
	t.Helper()
	if _, err := ch.QueueDeclare(queue, true, false, false, false, args); err != nil {
		t.Fatalf("declare %s: %v", queue, err)
	}
	if _, err := ch.QueuePurge(queue, false); err != nil {
		t.Fatalf("purge %s: %v", queue, err)
	}
	if exchange != "" {
		if err := ch.QueueBind(queue, key, exchange, false, nil); err != nil {
			t.Fatalf("bind %s: %v", queue, err)
		}
	}
}

// drain reads n messages of queue with a plain consumer (auto ack).
func drain(t testing.TB, ch *amqp.Channel, queue string, n int) []amqp.Delivery {
	t.Helper()
	ds, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []amqp.Delivery
	timeout := time.After(30 * time.Second)
	for len(got) < n {
		select {
		case d := <-ds:
			got = append(got, d)
		case <-timeout:
			t.Fatalf("read %d of %d messages of %s", len(got), n, queue)
		}
	}
	return got
}

func jsonEvent(id, typ string) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id: id, Source: "//herald/test", SpecVersion: "1.0", Type: typ,
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
			"subject":         {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "order-" + id}},
			"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC))}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: `{"n":"` + id + `"}`},
	}
}

func messages(evs ...*eventv1.CloudEvent) []bridge.Message {
	ms := make([]bridge.Message, len(evs))
	for i, ev := range evs {
		ms[i] = bridge.Message{Cursor: fmt.Sprintf("1-%d", i), Event: ev, Key: ev.GetId()}
	}
	return ms
}

// results collects done calls of Send.
type results struct {
	mu   sync.Mutex
	errs map[int]error
	n    map[int]int
}

func newResults() *results { return &results{errs: map[int]error{}, n: map[int]int{}} }

func (r *results) done(i int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs[i] = err
	r.n[i]++
}

// wait waits until every one of n messages was reported, and fails the
// test when one was reported twice.
func (r *results) wait(t testing.TB, n int) map[int]error {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.errs) == n
	}, "every message reported through done")
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, c := range r.n {
		if c != 1 {
			t.Fatalf("done called %d times for message %d", c, i)
		}
	}
	out := make(map[int]error, len(r.errs))
	for k, v := range r.errs {
		out[k] = v
	}
	return out
}

func closeSink(t testing.TB, s *Sink) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Errorf("close sink: %v", err)
	}
}
