package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Sink produces events to the bridge's topic: one record per event, keyed
// by Message.Key, with an idempotent producer and acks from every in-sync
// replica, so that the records of one key land in one partition in the
// order Send was given them.
//
// Send is safe for concurrent use, but per-key order holds only for what
// one goroutine hands over in order. done runs on franz-go's promise
// goroutine (one at a time, in order per partition): it must be quick and
// must not call Send or Close.
type Sink struct {
	cl         *kgo.Client
	topic      string
	structured bool
	closed     atomic.Bool
}

var _ bridge.Sink = (*Sink)(nil)

func newSink(cfg bridge.Config, o options) (*Sink, error) {
	opts, err := clientOpts(cfg, o)
	if err != nil {
		return nil, err
	}
	inFlight := int(cfg.Bridge.GetSink().GetMaxInFlight())
	if inFlight <= 0 {
		inFlight = defaultMaxInFlight
	}
	inFlight = min(inFlight, 10000)
	timeout := o.deliveryTimeout
	if timeout <= 0 {
		timeout = DeliveryTimeout
	}
	topic := cfg.Bridge.GetKafka().GetTopic()
	opts = append(opts,
		kgo.DefaultProduceTopic(topic),
		kgo.RequiredAcks(kgo.AllISRAcks()), // also what idempotence needs; franz-go is idempotent by default
		kgo.RecordDeliveryTimeout(timeout),
		// Without this, a record written to a connection that then died
		// waits for the broker's return, however long: the bridge is at
		// least once anyway (the engine sends again what failed), so a
		// bounded wait is worth a possible duplicate, which consumers
		// drop by ce_id.
		kgo.AllowIdempotentProduceCancellation(),
		// max_in_flight: Produce blocks past it, and a blocked Produce
		// also makes franz-go send what it lingers on at once.
		kgo.MaxBufferedRecords(inFlight),
		// franz-go's default, snappy, is unreadable to kafkajs (it has
		// only gzip built in). Uncompressed is every client's common
		// ground, as with the Java producer's default; a topic's
		// compression.type can still compress on the broker.
		kgo.ProducerBatchCompression(kgo.NoCompression()),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka bridge %q: %w", cfg.Name, err)
	}
	return &Sink{
		cl:         cl,
		topic:      topic,
		structured: cfg.Bridge.GetSink().GetContentMode() == registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED,
	}, nil
}

// Send produces msgs. done(i, nil) comes once every in-sync replica holds
// record i; an error comes when franz-go gave up on it (DeliveryTimeout,
// the client closed) or the brokers refused it, wrapped in bridge.Permanent
// when no retry can help (too large, an invalid topic). When a record of a
// partition fails, franz-go fails every record buffered behind it in that
// partition too, so a key's records never land with a gap.
//
// Send returns once every message is buffered. It blocks only when
// max_in_flight records are unconfirmed already (the engine never has
// more), until some are confirmed or fail (DeliveryTimeout at most) or
// Close. Once ctx is done, Send buffers nothing more (done gets ctx's
// error); what is buffered already stays, for Close to flush.
func (s *Sink) Send(ctx context.Context, msgs []bridge.Message, done func(i int, err error)) {
	for i, m := range msgs {
		if err := ctx.Err(); err != nil {
			done(i, err)
			continue
		}
		if s.closed.Load() {
			done(i, errClosed)
			continue
		}
		rec, err := s.record(m)
		if err != nil {
			done(i, bridge.Permanent(err))
			continue
		}
		// After Close, franz-go fails the record at once (ErrClientClosed).
		s.cl.Produce(context.WithoutCancel(ctx), rec, func(_ *kgo.Record, err error) {
			done(i, classify(err))
		})
	}
}

// record is m in the bridge's content mode.
func (s *Sink) record(m bridge.Message) (*kgo.Record, error) {
	if m.Event == nil {
		return nil, errors.New("no event")
	}
	rec := &kgo.Record{Topic: s.topic}
	if m.Key != "" {
		rec.Key = []byte(m.Key)
	}
	if s.structured {
		v, err := cloudevent.MarshalJSON(m.Event)
		if err != nil {
			return nil, fmt.Errorf("structured mode: %w", err)
		}
		rec.Value = v
		rec.Headers = []kgo.RecordHeader{{Key: headerContentType, Value: []byte(cloudevent.StructuredContentType)}}
		return rec, nil
	}
	b := cloudevent.ToBinary(m.Event)
	names := make([]string, 0, len(b.Attributes))
	size := len(b.ContentType)
	for k, v := range b.Attributes {
		names = append(names, k)
		size += len(v)
	}
	slices.Sort(names) // a stable header order, for people reading records
	// One backing array for every header value, not one each.
	buf := make([]byte, 0, size)
	value := func(v string) []byte {
		at := len(buf)
		buf = append(buf, v...)
		return buf[at:len(buf):len(buf)]
	}
	rec.Headers = make([]kgo.RecordHeader, 0, len(names)+1)
	for _, k := range names {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: headerKey(k), Value: value(b.Attributes[k])})
	}
	if b.ContentType != "" {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: headerContentType, Value: value(b.ContentType)})
	}
	rec.Value = b.Body
	return rec, nil
}

// headerKey is the binding's header of attribute name, without building
// the string for the attributes every event has.
func headerKey(name string) string {
	switch name {
	case "specversion":
		return "ce_specversion"
	case "id":
		return "ce_id"
	case "source":
		return "ce_source"
	case "type":
		return "ce_type"
	case "time":
		return "ce_time"
	case "subject":
		return "ce_subject"
	case "partitionkey":
		return "ce_partitionkey"
	case "dataschema":
		return "ce_dataschema"
	}
	return headerPrefix + name
}

// classify wraps what no retry can fix in bridge.Permanent.
func classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kerr.MessageTooLarge),
		errors.Is(err, kerr.RecordListTooLarge),
		errors.Is(err, kerr.InvalidTopicException),
		errors.Is(err, kerr.InvalidRecord),
		errors.Is(err, kerr.InvalidRequiredAcks),
		errors.Is(err, kerr.UnsupportedForMessageFormat):
		return bridge.Permanent(fmt.Errorf("kafka refused the record: %w", err))
	}
	return fmt.Errorf("kafka: %w", err)
}

// Close waits, within ctx, until every buffered record is confirmed or
// failed, then ends the client; records still unconfirmed then get done
// with an error.
func (s *Sink) Close(ctx context.Context) error {
	if s.closed.Swap(true) {
		return nil
	}
	err := s.cl.Flush(ctx)
	s.cl.Close() // fails what is still buffered, calling its promises
	return err
}
