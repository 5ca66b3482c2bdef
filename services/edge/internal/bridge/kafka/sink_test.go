package kafka

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

const sinkDir = registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK

// seen is one record as a reader outside Herald saw it.
type seen struct {
	Partition int32
	Offset    int64
	Key       string
	Value     []byte
	Headers   map[string]string
}

// checkRecord checks that r is m per the Kafka binding, in binary or
// structured mode.
func checkRecord(t *testing.T, structured bool, m bridge.Message, r seen) {
	t.Helper()
	if r.Key != m.Key {
		t.Errorf("%s: key %q, want %q", m.Event.GetId(), r.Key, m.Key)
	}
	if structured {
		if ct := r.Headers["content-type"]; ct != cloudevent.StructuredContentType {
			t.Errorf("%s: content-type %q, want %q", m.Event.GetId(), ct, cloudevent.StructuredContentType)
		}
		for k := range r.Headers {
			if strings.HasPrefix(k, "ce_") {
				t.Errorf("%s: structured record has header %s", m.Event.GetId(), k)
			}
		}
		ev, err := cloudevent.UnmarshalJSON(r.Value)
		if err != nil {
			t.Fatalf("%s: value is not a CloudEvent: %v: %s", m.Event.GetId(), err, r.Value)
		}
		if !proto.Equal(ev, m.Event) {
			t.Errorf("%s: value reads as %v, want %v", m.Event.GetId(), ev, m.Event)
		}
		return
	}
	b := cloudevent.ToBinary(m.Event)
	want := map[string]string{"content-type": b.ContentType}
	for k, v := range b.Attributes {
		want["ce_"+k] = v
	}
	if len(r.Headers) != len(want) {
		t.Errorf("%s: headers %v, want %v", m.Event.GetId(), r.Headers, want)
	}
	for k, v := range want {
		if r.Headers[k] != v {
			t.Errorf("%s: header %s = %q, want %q", m.Event.GetId(), k, r.Headers[k], v)
		}
	}
	if !bytes.Equal(r.Value, b.Body) {
		t.Errorf("%s: value %q, want %q", m.Event.GetId(), r.Value, b.Body)
	}
	// And it reads back as the same event.
	attrs := map[string]string{}
	for k, v := range r.Headers {
		if a, ok := strings.CutPrefix(k, "ce_"); ok {
			attrs[a] = v
		}
	}
	ev, err := cloudevent.FromBinary(cloudevent.Binary{Attributes: attrs, ContentType: r.Headers["content-type"], Body: r.Value})
	if err != nil || !proto.Equal(ev, m.Event) {
		t.Errorf("%s: record reads as %v (%v), want %v", m.Event.GetId(), ev, err, m.Event)
	}
}

// byID indexes the records by the event id they carry.
func byID(t *testing.T, structured bool, recs []seen) map[string]seen {
	t.Helper()
	out := map[string]seen{}
	for _, r := range recs {
		id := r.Headers["ce_id"]
		if structured {
			var v struct{ ID string }
			if err := json.Unmarshal(r.Value, &v); err != nil {
				t.Fatalf("record %d/%d: %v", r.Partition, r.Offset, err)
			}
			id = v.ID
		}
		if _, dup := out[id]; dup {
			t.Errorf("event %s written twice", id)
		}
		out[id] = r
	}
	return out
}

// kcatRead reads every record of topic with kcat (librdkafka), from the
// beginning to the end of each partition.
func kcatRead(t *testing.T, addr, topic string) []seen {
	t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat not found (Debian package kcat; .ci/run installs it): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-C", "-b", addr, "-t", topic, "-o", "beginning", "-e", "-J", "-q")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kcat: %v\n%s", err, stderr.String())
	}
	var recs []seen
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Partition int32    `json:"partition"`
			Offset    int64    `json:"offset"`
			Key       *string  `json:"key"`
			Payload   *string  `json:"payload"`
			Headers   []string `json:"headers"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("kcat line %q: %v", sc.Text(), err)
		}
		r := seen{Partition: line.Partition, Offset: line.Offset, Headers: map[string]string{}}
		if line.Key != nil {
			r.Key = *line.Key
		}
		if line.Payload != nil {
			r.Value = []byte(*line.Payload)
		}
		for i := 0; i+1 < len(line.Headers); i += 2 {
			r.Headers[line.Headers[i]] = line.Headers[i+1]
		}
		recs = append(recs, r)
	}
	return recs
}

// kafkajsRead reads n records of topic with the kafkajs client
// (tests/kafka/read.mjs).
func kafkajsRead(t *testing.T, addr, topic string, n int) []seen {
	t.Helper()
	node := nodehook.Run(t, "kafka", "read.mjs", "kafkajs",
		"KAFKA_BROKERS="+addr, "KAFKA_TOPIC="+topic, "KAFKA_COUNT="+strconv.Itoa(n))
	var recs []seen
	timeout := time.After(testTimeout)
	for {
		select {
		case line, ok := <-node.Lines:
			if !ok {
				t.Fatalf("read.mjs exited after %d of %d records; stderr:\n%s", len(recs), n, node.Stderr())
			}
			var m struct {
				Kind      string            `json:"kind"`
				Partition int32             `json:"partition"`
				Offset    string            `json:"offset"`
				Key       *string           `json:"key"`
				Value     string            `json:"value"` // base64
				Headers   map[string]string `json:"headers"`
				Message   string            `json:"message"`
			}
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("read.mjs line %q: %v", line, err)
			}
			switch m.Kind {
			case "record":
				off, _ := strconv.ParseInt(m.Offset, 10, 64)
				r := seen{Partition: m.Partition, Offset: off, Headers: m.Headers}
				if m.Key != nil {
					r.Key = *m.Key
				}
				r.Value = decodeB64(t, m.Value)
				recs = append(recs, r)
			case "done":
				return recs
			case "error":
				t.Fatalf("read.mjs: %s; stderr:\n%s", m.Message, node.Stderr())
			}
		case <-timeout:
			t.Fatalf("read.mjs gave %d of %d records in %v; stderr:\n%s", len(recs), n, testTimeout, node.Stderr())
		}
	}
}

// The sink writes what kcat (librdkafka) and kafkajs read as the
// CloudEvents Kafka binding says, in both content modes: the key, ce_*
// headers and the data in binary mode, the JSON format in structured mode.
func TestSinkWritesTheBinding(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			const topic, n = "orders", 60
			k := startCluster(t, 3, []string{topic})
			s := testSink(t, kafkaCfg(k.addr, topic, sinkDir, structured), options{})
			msgs := messages(0, n, 7)
			// One binary-data event, which travels as bytes (binary
			// mode) or data_base64 (structured).
			msgs[5].Event.Attributes["datacontenttype"].Attr = &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/octet-stream"}
			msgs[5].Event.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte{0, 1, 2, 0xff}}
			for i, err := range sendAll(t, s, msgs, 16) {
				if err != nil {
					t.Fatalf("done(%d): %v", i, err)
				}
			}
			for reader, recs := range map[string][]seen{
				"kcat":    kcatRead(t, k.addr, topic),
				"kafkajs": kafkajsRead(t, k.addr, topic, n),
			} {
				if len(recs) != n {
					t.Fatalf("%s read %d records, want %d", reader, len(recs), n)
				}
				got := byID(t, structured, recs)
				for _, m := range msgs {
					r, ok := got[m.Event.GetId()]
					if !ok {
						t.Fatalf("%s: event %s missing", reader, m.Event.GetId())
					}
					if m.Event.GetId() == msgs[5].Event.GetId() && reader == "kcat" && !structured {
						// kcat -J prints a payload as a string:
						// check its bytes apart.
						continue
					}
					checkRecord(t, structured, m, r)
				}
			}
			// The binary record's bytes, by a Go reader.
			for _, r := range readAll(t, k.addr, topic, n) {
				if string(r.Key) == msgs[5].Key && headers(r)["ce_id"] == msgs[5].Event.GetId() {
					if !bytes.Equal(r.Value, []byte{0, 1, 2, 0xff}) {
						t.Errorf("binary data %x", r.Value)
					}
				}
			}
		})
	}
}

// Records of one key keep the order Send was given them in, across
// partitions and batches.
func TestSinkKeepsPerKeyOrder(t *testing.T) {
	const topic, n, keys = "orders", 2000, 13
	k := startCluster(t, 4, []string{topic})
	s := testSink(t, kafkaCfg(k.addr, topic, sinkDir, false), options{})
	for i, err := range sendAll(t, s, messages(0, n, keys), 50) {
		if err != nil {
			t.Fatalf("done(%d): %v", i, err)
		}
	}
	last := map[string]int{}
	part := map[string]int32{}
	for _, r := range readAll(t, k.addr, topic, n) {
		key := string(r.Key)
		var d struct{ N int }
		if err := json.Unmarshal(r.Value, &d); err != nil {
			t.Fatal(err)
		}
		if p, ok := part[key]; ok && p != r.Partition {
			t.Fatalf("key %s in partitions %d and %d", key, p, r.Partition)
		}
		part[key] = r.Partition
		if prev, ok := last[key]; ok && d.N <= prev {
			t.Fatalf("key %s: event %d after %d", key, d.N, prev)
		}
		last[key] = d.N
	}
	if len(last) != keys {
		t.Fatalf("%d keys read, want %d", len(last), keys)
	}
}

// With the broker down, every done reports a retryable error (after the
// delivery timeout); once it is back, sending the same messages again
// succeeds, and the topic then holds everything, what was written before
// the outage included.
func TestSinkBrokerDownThenBack(t *testing.T) {
	const topic = "orders"
	k := startCluster(t, 3, []string{topic})
	s := testSink(t, kafkaCfg(k.addr, topic, sinkDir, false), options{deliveryTimeout: time.Second})
	before, during := messages(0, 30, 5), messages(30, 30, 5)
	for i, err := range sendAll(t, s, before, 10) {
		if err != nil {
			t.Fatalf("done(%d) before the outage: %v", i, err)
		}
	}

	k.stop()
	for i, err := range sendAll(t, s, during, 10) {
		if err == nil {
			t.Fatalf("done(%d) with the broker down: nil", i)
		}
		if bridge.IsPermanent(err) {
			t.Fatalf("done(%d) with the broker down: permanent %v", i, err)
		}
	}

	k.start()
	// As the engine does: the same messages again until they are
	// confirmed.
	testutil.Eventually(t, testTimeout, func() bool {
		for _, err := range sendAll(t, s, during, 10) {
			if err != nil {
				if bridge.IsPermanent(err) {
					t.Fatalf("after the restart: permanent %v", err)
				}
				return false
			}
		}
		return true
	}, "the sink delivers again once the broker is back")

	recs := readAll(t, k.addr, topic, 60)
	ids := map[string]bool{}
	for _, r := range recs {
		ids[headers(r)["ce_id"]] = true
	}
	for _, m := range append(before, during...) {
		if !ids[m.Event.GetId()] {
			t.Errorf("event %s lost", m.Event.GetId())
		}
	}
}

// A sink whose broker was never up reports retryable errors, then
// delivers once the broker starts.
func TestSinkBrokerNotYetUp(t *testing.T) {
	const topic = "orders"
	k := startCluster(t, 1, []string{topic})
	k.stop()
	s := testSink(t, kafkaCfg(k.addr, topic, sinkDir, true), options{deliveryTimeout: time.Second})
	msgs := messages(0, 5, 2)
	for i, err := range sendAll(t, s, msgs, 5) {
		if err == nil || bridge.IsPermanent(err) {
			t.Fatalf("done(%d) with no broker: %v, want a retryable error", i, err)
		}
	}
	k.start()
	testutil.Eventually(t, testTimeout, func() bool {
		for _, err := range sendAll(t, s, msgs, 5) {
			if err != nil {
				return false
			}
		}
		return true
	}, "the sink delivers once the broker is up")
	if n := len(readAll(t, k.addr, topic, 5)); n < 5 {
		t.Fatalf("%d records", n)
	}
}

// What no retry can fix is Permanent: a record over the producer's batch
// limit, a message with no event; an invalid topic name fails New. One bad message does not hold up the
// others.
func TestSinkPermanentErrors(t *testing.T) {
	const topic = "orders"
	k := startCluster(t, 1, []string{topic})
	s := testSink(t, kafkaCfg(k.addr, topic, sinkDir, false), options{})
	msgs := messages(0, 3, 3)
	msgs[1].Event.Data = &eventv1.CloudEvent_TextData{TextData: `"` + strings.Repeat("x", 2<<20) + `"`}
	errs := sendAll(t, s, msgs, 3)
	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("the small records: %v, %v", errs[0], errs[2])
	}
	if !bridge.IsPermanent(errs[1]) {
		t.Fatalf("a 2 MiB record: %v, want a permanent error", errs[1])
	}
	if errs := sendAll(t, s, []bridge.Message{{Key: "k"}}, 1); !bridge.IsPermanent(errs[0]) {
		t.Fatalf("no event: %v, want a permanent error", errs[0])
	}

	if _, _, err := New(kafkaCfg(k.addr, "not a topic!", sinkDir, false)); err == nil {
		t.Fatal("New with an invalid topic name: nil error")
	}
}

// The brokers' refusals that no retry fixes are Permanent; the others,
// and franz-go's own give-ups, are not.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err       error
		permanent bool
	}{
		{kerr.MessageTooLarge, true},
		{kerr.RecordListTooLarge, true},
		{kerr.InvalidTopicException, true},
		{kerr.InvalidRecord, true},
		{fmt.Errorf("wrapped: %w", kerr.MessageTooLarge), true},
		{kgo.ErrRecordTimeout, false},
		{kgo.ErrClientClosed, false},
		{kerr.NotLeaderForPartition, false},
		{kerr.UnknownTopicOrPartition, false},  // it may be created
		{kerr.TopicAuthorizationFailed, false}, // an operator may grant it
		{context.Canceled, false},
	} {
		got := classify(c.err)
		if got == nil || bridge.IsPermanent(got) != c.permanent || !errors.Is(got, c.err) {
			t.Errorf("classify(%v) = %v, want permanent=%v wrapping it", c.err, got, c.permanent)
		}
	}
	if classify(nil) != nil {
		t.Error("classify(nil) != nil")
	}
}

// Close flushes what the broker confirms; with the broker down it gives
// up when its ctx ends and every unconfirmed message gets an error. A Send
// after Close fails at once.
func TestSinkClose(t *testing.T) {
	const topic = "orders"
	k := startCluster(t, 1, []string{topic})
	s := testSink(t, kafkaCfg(k.addr, topic, sinkDir, false), options{deliveryTimeout: time.Minute})
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	msgs := messages(0, 20, 4)
	wg.Add(len(msgs))
	s.Send(context.Background(), msgs, func(_ int, err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		wg.Done()
	})
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitGroup(t, &wg, "the flushed records")
	for _, err := range errs {
		if err != nil {
			t.Fatalf("a record flushed by Close: %v", err)
		}
	}
	if n := len(readAll(t, k.addr, topic, 20)); n != 20 {
		t.Fatalf("%d records after Close", n)
	}
	if errs := sendAll(t, s, messages(0, 1, 1), 1); errs[0] == nil {
		t.Fatal("Send after Close: nil")
	}

	k.stop()
	s2 := testSink(t, kafkaCfg(k.addr, topic, sinkDir, false), options{deliveryTimeout: time.Minute})
	errs = nil
	wg.Add(len(msgs))
	s2.Send(context.Background(), msgs, func(_ int, err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		wg.Done()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := s2.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with the broker down: %v, want the ctx's deadline", err)
	}
	waitGroup(t, &wg, "the records Close gave up on")
	for _, err := range errs {
		if err == nil || bridge.IsPermanent(err) {
			t.Fatalf("a record Close gave up on: %v, want a retryable error", err)
		}
	}
}

// Send blocks while max_in_flight records are unconfirmed, and goes on
// once the broker confirms some. A done ctx buffers nothing more.
func TestSinkSendBoundsInFlight(t *testing.T) {
	const topic = "orders"
	k := startCluster(t, 1, []string{topic})
	k.stop()
	cfg := kafkaCfg(k.addr, topic, sinkDir, false)
	cfg.Bridge.Sink.MaxInFlight = 4
	s := testSink(t, cfg, options{deliveryTimeout: time.Minute})
	var mu sync.Mutex
	got := map[int]error{}
	var wg sync.WaitGroup
	wg.Add(6)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		s.Send(context.Background(), messages(0, 6, 1), func(i int, err error) {
			mu.Lock()
			got[i] = err
			mu.Unlock()
			wg.Done()
		})
	}()
	// Four buffered and the fifth waiting for room (franz-go counts it).
	testutil.Eventually(t, testTimeout, func() bool { return s.cl.BufferedProduceRecords() == 5 }, "Send blocked on the fifth record")
	select {
	case <-returned:
		t.Fatal("Send returned with 6 records to buffer and room for 4")
	default:
	}
	k.start()
	<-returned
	waitGroup(t, &wg, "the six records")
	for i := range 6 {
		if got[i] != nil {
			t.Errorf("message %d: %v", i, got[i])
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i, err := range sendAllCtx(t, ctx, s, messages(6, 3, 1), 3) {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("message %d with a done ctx: %v", i, err)
		}
	}
}
