package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

const sourceDir = registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE

// running is a Source's Run in a goroutine, stopped (and checked to
// return nil) when the test ends or by stop.
type running struct {
	stop func()
}

func runSource(t *testing.T, s *Source, batch int, publish bridge.PublishFunc) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, batch, publish) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(testTimeout):
				t.Errorf("Run did not return %v after its ctx ended", testTimeout)
			}
		})
	}
	t.Cleanup(stop)
	return &running{stop: stop}
}

func testSource(t *testing.T, cfg bridge.Config) *Source {
	t.Helper()
	s, err := newSource(cfg, options{minBackoff: 20 * time.Millisecond, maxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// collector is a PublishFunc that keeps what it was given, failing the
// calls that fail says to.
type collector struct {
	mu    sync.Mutex
	calls int
	fail  func(call int) bool
	got   []bridge.Record // of the calls that returned nil
	seen  []bridge.Record // of every call
}

func (c *collector) publish(_ context.Context, recs []bridge.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	c.seen = append(c.seen, recs...)
	if c.fail != nil && c.fail(c.calls) {
		return errors.New("the router is down")
	}
	c.got = append(c.got, recs...)
	return nil
}

func (c *collector) records(all bool) []bridge.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	if all {
		return slices.Clone(c.seen)
	}
	return slices.Clone(c.got)
}

// ids are the distinct event ids of recs (records that are not events
// count by position).
func ids(recs []bridge.Record) map[string]int {
	out := map[string]int{}
	for _, r := range recs {
		if r.Event != nil {
			out[r.Event.GetId()]++
		} else {
			out[r.Position]++
		}
	}
	return out
}

// Records in the three shapes of the Kafka binding become the right
// events: structured (content-type application/cloudevents+json), binary
// (ce_* headers) and plain records (a new event of the bridge's type, its
// id from the record's position). Unreadable records become Record.Err
// with their payload and position, and the records behind them still flow.
func TestSourceReadsTheThreeShapes(t *testing.T) {
	const topic = "inbound"
	k := startCluster(t, 1, []string{topic})
	structured := testEvent(1, "a")
	sv, err := cloudevent.MarshalJSON(structured)
	if err != nil {
		t.Fatal(err)
	}
	binary := testEvent(2, "b")
	b := cloudevent.ToBinary(binary)
	var bh []kgo.RecordHeader
	for k, v := range b.Attributes {
		bh = append(bh, kgo.RecordHeader{Key: "ce_" + k, Value: []byte(v)})
	}
	bh = append(bh, kgo.RecordHeader{Key: "content-type", Value: []byte(b.ContentType)})
	last := testEvent(7, "c")
	lv, _ := cloudevent.MarshalJSON(last)
	at := time.Date(2026, 12, 3, 9, 30, 0, 0, time.UTC)
	produce(t, k.addr,
		&kgo.Record{Topic: topic, Value: sv, Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/cloudevents+json; charset=UTF-8")}}},
		&kgo.Record{Topic: topic, Key: []byte("b"), Value: b.Body, Headers: bh},
		&kgo.Record{Topic: topic, Key: []byte("cust-1"), Value: []byte(`{"amount":12}`), Timestamp: at},
		&kgo.Record{Topic: topic, Value: []byte{0xde, 0xad}, Timestamp: at, Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/x-thing")}}},
		&kgo.Record{Topic: topic, Value: []byte(`{"specversion":"1.0",`), Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte(cloudevent.StructuredContentType)}}},
		&kgo.Record{Topic: topic, Value: []byte("x"), Headers: []kgo.RecordHeader{{Key: "ce_specversion", Value: []byte("1.0")}}},
		&kgo.Record{Topic: topic, Value: lv, Headers: []kgo.RecordHeader{{Key: "content-type", Value: []byte(cloudevent.StructuredContentType)}}},
	)

	s := testSource(t, kafkaCfg(k.addr, topic, sourceDir, false))
	c := &collector{}
	runSource(t, s, 100, c.publish)
	testutil.Eventually(t, testTimeout, func() bool { return len(c.records(false)) >= 7 }, "7 records published")
	got := c.records(false)
	if len(got) != 7 {
		t.Fatalf("%d records, want 7", len(got))
	}

	if !proto.Equal(got[0].Event, structured) || got[0].Err != nil {
		t.Errorf("structured: %v (%v), want %v", got[0].Event, got[0].Err, structured)
	}
	if !proto.Equal(got[1].Event, binary) || got[1].Err != nil {
		t.Errorf("binary: %v (%v), want %v", got[1].Event, got[1].Err, binary)
	}
	plain := func(i int, ct string, key string) {
		t.Helper()
		want := bridge.NewEvent(s.cfg, fmt.Sprintf("%s-0-%d", topic, i), "kafka://"+topic, ct, []byte(got[i].Raw), at)
		if key != "" {
			want.Attributes["partitionkey"] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: key}}
		}
		if !proto.Equal(got[i].Event, want) || got[i].Err != nil {
			t.Errorf("record %d: %v (%v), want %v", i, got[i].Event, got[i].Err, want)
		}
		if got[i].Event.GetType() != "kafka.record.received" {
			t.Errorf("record %d: type %q", i, got[i].Event.GetType())
		}
	}
	plain(2, "application/json", "cust-1")
	if got[2].Event.GetTextData() != `{"amount":12}` || cloudevent.ContentType(got[2].Event) != "application/json" {
		t.Errorf("plain JSON record: %v", got[2].Event)
	}
	plain(3, "application/x-thing", "")
	if string(got[3].Event.GetBinaryData()) != "\xde\xad" {
		t.Errorf("plain bytes record: %v", got[3].Event)
	}
	for i, why := range map[int]string{4: "structured", 5: "binary"} {
		r := got[i]
		if r.Err == nil || r.Event != nil {
			t.Errorf("unreadable %s record: %v, %v; want an error", why, r.Event, r.Err)
			continue
		}
		if want := fmt.Sprintf("%s/0@%d", topic, i); r.Position != want || !strings.Contains(r.Err.Error(), want) {
			t.Errorf("unreadable %s record: position %q (%v), want %q", why, r.Position, r.Err, want)
		}
	}
	if string(got[4].Raw) != `{"specversion":"1.0",` {
		t.Errorf("raw of the unreadable record: %q", got[4].Raw)
	}
	if !proto.Equal(got[6].Event, last) {
		t.Errorf("the record after the unreadable ones: %v, want %v", got[6].Event, last)
	}
}

// Offsets are committed only once publish returned nil: a publish that
// fails first still ends with every record published (the same records
// come again), and a source that stops before its commit (a crash) leaves
// its records to the next one, which reads them with the same event ids.
// Lag counts the records not committed.
func TestSourceCommitsOnlyAfterPublish(t *testing.T) {
	const topic = "inbound"
	k := startCluster(t, 3, []string{topic})
	cfg := kafkaCfg(k.addr, topic, sourceDir, false)
	var recs []*kgo.Record
	for i := range 30 {
		recs = append(recs, &kgo.Record{Topic: topic, Key: fmt.Appendf(nil, "k%d", i%6), Value: fmt.Appendf(nil, `{"n":%d}`, i)})
	}
	produce(t, k.addr, recs...)
	want := map[string]bool{}
	for _, r := range recs {
		want[fmt.Sprintf("%s-%d-%d", topic, r.Partition, r.Offset)] = true
	}

	s1 := testSource(t, cfg)
	lag := func(s *Source) int64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		n, err := s.Lag(ctx)
		if err != nil {
			t.Fatalf("Lag: %v", err)
		}
		return n
	}
	if n := lag(s1); n != 30 {
		t.Fatalf("Lag before any commit: %d, want 30", n)
	}

	c1 := &collector{fail: func(call int) bool { return call <= 2 }}
	r1 := runSource(t, s1, 7, c1.publish)
	testutil.Eventually(t, testTimeout, func() bool { return len(ids(c1.records(false))) == 30 }, "all 30 records published")
	if len(c1.records(true)) <= len(c1.records(false)) {
		t.Fatal("no publish with records failed")
	}
	failed := c1.records(true)[:0]
	for _, r := range c1.records(true) {
		if r.Event != nil && !slices.ContainsFunc(c1.records(false), func(g bridge.Record) bool { return g.Event.GetId() == r.Event.GetId() }) {
			failed = append(failed, r)
		}
	}
	if len(failed) != 0 {
		t.Fatalf("records of a failed publish never published: %v", ids(failed))
	}
	for id, n := range ids(c1.records(false)) {
		if !want[id] {
			t.Errorf("published %s, not a record produced", id)
		}
		if n != 1 {
			t.Errorf("%s published %d times", id, n)
		}
	}
	testutil.Eventually(t, testTimeout, func() bool { return lag(s1) == 0 }, "Lag 0 once everything is committed")
	r1.stop()
	_ = s1.Close()

	// A crash before the commit: the source publishes, but never
	// commits (publish keeps failing), then is gone.
	var more []*kgo.Record
	for i := range 12 {
		more = append(more, &kgo.Record{Topic: topic, Key: fmt.Appendf(nil, "k%d", i%6), Value: fmt.Appendf(nil, `{"n":%d}`, 100+i)})
	}
	produce(t, k.addr, more...)
	s2 := testSource(t, cfg)
	if n := lag(s2); n != 12 {
		t.Fatalf("Lag with 12 new records: %d, want 12", n)
	}
	c2 := &collector{fail: func(int) bool { return true }}
	r2 := runSource(t, s2, 100, c2.publish)
	testutil.Eventually(t, testTimeout, func() bool { return len(ids(c2.records(true))) == 12 }, "the 12 new records handed to publish")
	r2.stop()
	if n := lag(s2); n != 12 {
		t.Fatalf("Lag after the crash: %d, want 12", n)
	}
	_ = s2.Close()

	s3 := testSource(t, cfg)
	c3 := &collector{}
	runSource(t, s3, 100, c3.publish)
	testutil.Eventually(t, testTimeout, func() bool { return len(ids(c3.records(false))) >= 12 }, "the next source publishes the 12")
	testutil.Eventually(t, testTimeout, func() bool { return lag(s3) == 0 }, "Lag 0 after the next source's commit")
	got, before := ids(c3.records(false)), ids(c2.records(true))
	if len(got) != 12 {
		t.Fatalf("the next source published %d records, want the 12 uncommitted: %v", len(got), got)
	}
	for id := range before {
		if got[id] == 0 {
			t.Errorf("%s: read before the crash, not after (ids %v, before %v)", id, got, before)
		}
	}
	for _, r := range c3.records(false) {
		var prev *eventv1.CloudEvent
		for _, b := range c2.records(true) {
			if b.Event.GetId() == r.Event.GetId() {
				prev = b.Event
			}
		}
		if !proto.Equal(prev, r.Event) {
			t.Errorf("%s: read as %v after the crash, %v before", r.Event.GetId(), r.Event, prev)
		}
	}
}

// A source goes on through a broker outage: Run keeps going, and once the
// broker is back what was produced meanwhile is published and committed.
func TestSourceBrokerDownThenBack(t *testing.T) {
	const topic = "inbound"
	k := startCluster(t, 2, []string{topic})
	rec := func(i int) *kgo.Record {
		return &kgo.Record{Topic: topic, Key: fmt.Appendf(nil, "k%d", i%3), Value: fmt.Appendf(nil, `{"n":%d}`, i)}
	}
	for i := range 10 {
		produce(t, k.addr, rec(i))
	}
	s := testSource(t, kafkaCfg(k.addr, topic, sourceDir, false))
	c := &collector{}
	runSource(t, s, 100, c.publish)
	testutil.Eventually(t, testTimeout, func() bool { return len(ids(c.records(false))) == 10 }, "the first 10 published")
	testutil.Eventually(t, testTimeout, func() bool {
		n, err := s.Lag(context.Background())
		return err == nil && n == 0
	}, "the first 10 committed")

	k.stop()
	time.Sleep(2 * time.Second) // an outage long enough for the client to notice
	k.start()
	for i := 10; i < 20; i++ {
		produce(t, k.addr, rec(i))
	}
	testutil.Eventually(t, testTimeout, func() bool { return len(ids(c.records(false))) == 20 }, "the 10 produced after the outage published")
	testutil.Eventually(t, testTimeout, func() bool {
		n, err := s.Lag(context.Background())
		return err == nil && n == 0
	}, "everything committed after the outage")
}

// Close ends a running Run, and a closed source refuses to Run.
func TestSourceClose(t *testing.T) {
	const topic = "inbound"
	k := startCluster(t, 1, []string{topic})
	s := testSource(t, kafkaCfg(k.addr, topic, sourceDir, false))
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background(), 10, (&collector{}).publish) }()
	time.Sleep(100 * time.Millisecond) // let Run start, or not: both end the same
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, errClosed) {
			t.Fatalf("Run after Close: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Close did not end Run")
	}
	if err := s.Run(context.Background(), 10, (&collector{}).publish); !errors.Is(err, errClosed) {
		t.Fatalf("Run on a closed source: %v", err)
	}
}

// New checks the bridge: a direction, brokers, a valid topic, a known SASL
// mechanism, a source's event type.
func TestNewRefusesBadConfig(t *testing.T) {
	good := func(dir registryv1.BridgeDirection) bridge.Config { return kafkaCfg("127.0.0.1:1", "t", dir, false) }
	for name, mutate := range map[string]func(*bridge.Config){
		"no direction":     func(c *bridge.Config) { c.Bridge.Direction = registryv1.BridgeDirection_BRIDGE_DIRECTION_UNSPECIFIED },
		"not kafka":        func(c *bridge.Config) { c.Bridge.System = &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{}} },
		"no brokers":       func(c *bridge.Config) { c.Bridge.GetKafka().Brokers = []string{" "} },
		"no topic":         func(c *bridge.Config) { c.Bridge.GetKafka().Topic = "" },
		"bad topic":        func(c *bridge.Config) { c.Bridge.GetKafka().Topic = "a/b" },
		"bad sasl":         func(c *bridge.Config) { c.Bridge.GetKafka().SaslMechanism = "GSSAPI" },
		"no event type":    func(c *bridge.Config) { c.Bridge.Direction = sourceDir; c.Bridge.Source = &registryv1.BridgeSource{} },
		"source no source": func(c *bridge.Config) { c.Bridge.Direction = sourceDir; c.Bridge.Source = nil },
	} {
		c := good(sinkDir)
		mutate(&c)
		if _, _, err := New(c); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	for _, dir := range []registryv1.BridgeDirection{sinkDir, sourceDir} {
		sink, src, err := New(good(dir))
		if err != nil {
			t.Fatalf("%v: %v", dir, err)
		}
		if (sink != nil) != (dir == sinkDir) || (src != nil) != (dir == sourceDir) {
			t.Fatalf("%v: sink %v, source %v", dir, sink, src)
		}
		if sink != nil {
			_ = sink.Close(context.Background())
		}
		if src != nil {
			_ = src.Close()
		}
	}
}

// TestSourceGroupSessionIsShort: the source's consumer group session is
// 10 s (not franz-go's 45 s), so a dead edge's partitions go to the edge
// that took the bridge over about as soon as it holds the lease.
func TestSourceGroupSessionIsShort(t *testing.T) {
	s := testSource(t, kafkaCfg("127.0.0.1:1", "orders", registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE, false))
	cl, err := kgo.NewClient(s.opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if got := cl.OptValue(kgo.SessionTimeout); got != 10*time.Second {
		t.Errorf("group session timeout %v, want 10s", got)
	}
	if got := cl.OptValue(kgo.HeartbeatInterval); got != 2500*time.Millisecond {
		t.Errorf("heartbeat interval %v, want 2.5s", got)
	}
}
