package amqp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

// batchWait is how long Run waits for more messages once a batch has its
// first one.
const batchWait = 25 * time.Millisecond

// Source consumes a queue with manual acknowledgements and turns each
// message into an event:
//
//   - content type application/cloudevents+json: the structured format;
//   - a cloudEvents:specversion header (or cloudEvents_ / ce_): binary
//     mode, the content type being datacontenttype;
//   - anything else: an event of the bridge's event type built with
//     bridge.NewEvent, source amqp://<queue> (amqp:///<escaped queue>
//     when the name is no URI host), its id the message-id
//     property when the publisher set one, else "amqp-" and the hex
//     SHA-256 of the body. Without a message-id, messages with identical
//     bodies therefore get the same id, and the router's dedupe keeps only
//     the first: publishers that send equal payloads as distinct events
//     must set message-id.
//
// A message that cannot be read (a structured body that is no CloudEvent,
// a binary one missing required attributes) becomes a Record with Err and
// is acknowledged with its batch once publish returned, so the engine
// dead-letters it and the queue flows on.
type Source struct {
	url, name, queue string
	source           string // of events built from plain messages
	cfg              bridge.Config

	mu      sync.Mutex
	closed  bool
	run     *amqp.Connection // Run's, for Close
	lagConn *amqp.Connection
}

// NewSource builds a source of cfg's queue; it connects in Run and Lag.
func NewSource(cfg bridge.Config) (*Source, error) {
	u, err := brokerURL(cfg)
	if err != nil {
		return nil, err
	}
	q := cfg.Bridge.GetAmqp().GetQueue()
	if q == "" || len(q) > 255 {
		return nil, errors.New("amqp bridge: a source needs a queue (at most 255 bytes)")
	}
	if cfg.Bridge.GetSource().GetEventType() == "" {
		return nil, errors.New("amqp bridge: a source needs an event type")
	}
	return &Source{url: u, name: cfg.Name, queue: q, source: sourceURI(q), cfg: cfg}, nil
}

// sourceURI is amqp://<queue>, or amqp:///<queue, escaped> for a queue
// name that is no URI host (orders:eu, names with spaces...).
func sourceURI(queue string) string {
	s := "amqp://" + queue
	if _, err := url.Parse(s); err == nil {
		return s
	}
	return "amqp:///" + url.PathEscape(queue)
}

// Run implements bridge.Source. It consumes with a prefetch of batch, so
// the broker holds at most one batch unacknowledged. After publish
// returned nil it acknowledges the batch (one multiple ack); after an
// error it nacks the batch with requeue, so the broker hands the same
// messages again, waits (100ms doubling to 5s, ctx permitting) and goes
// on. Unacknowledged messages also go back to the queue when the
// connection ends, whichever way. Run returns nil when ctx ends or Close
// was called, an error when the connection or the consumer ended
// otherwise (the queue missing or deleted, the broker gone). Run must not
// be called twice at once.
func (s *Source) Run(ctx context.Context, batch int, publish bridge.PublishFunc) error {
	if batch < 1 {
		batch = 100
	}
	if batch > 65535 { // the prefetch count is 16 bits
		batch = 65535
	}
	conn, err := dial(s.url, s.name, "source")
	if err != nil {
		return err
	}
	defer closeConn(conn)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.run = conn
	s.mu.Unlock()
	closes := conn.NotifyClose(make(chan *amqp.Error, 1))
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("amqp: open channel: %w", err)
	}
	if err := ch.Qos(batch, 0, false); err != nil {
		return fmt.Errorf("amqp: prefetch %d: %w", batch, err)
	}
	chCloses := ch.NotifyClose(make(chan *amqp.Error, 1))
	deliveries, err := ch.ConsumeWithContext(ctx, s.queue, "herald-"+s.name, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("amqp: consume %s: %w", s.queue, err)
	}
	ended := func() error {
		if ctx.Err() != nil || s.isClosed() {
			return nil
		}
		for _, c := range []<-chan *amqp.Error{chCloses, closes} {
			select {
			case e := <-c:
				if e != nil {
					return fmt.Errorf("amqp: consume %s: %w", s.queue, e)
				}
			default:
			}
		}
		return fmt.Errorf("amqp: consume %s: the broker ended the consumer", s.queue)
	}

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var backoff time.Duration
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case d, ok = <-deliveries:
			if !ok {
				return ended()
			}
		}
		recs := make([]bridge.Record, 0, batch)
		recs = append(recs, s.record(d))
		last := d.DeliveryTag
		timer.Reset(batchWait)
	gather:
		for len(recs) < batch {
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
				break gather
			case d, ok = <-deliveries:
				if !ok {
					// The channel is gone: nothing can be acknowledged,
					// the broker requeues it all.
					return ended()
				}
				recs = append(recs, s.record(d))
				last = d.DeliveryTag
			}
		}
		timer.Stop()

		if err := publish(ctx, recs); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if err := ch.Nack(last, true, true); err != nil {
				return fmt.Errorf("amqp: nack %s: %w", s.queue, err)
			}
			if backoff == 0 {
				backoff = 100 * time.Millisecond
			} else if backoff *= 2; backoff > 5*time.Second {
				backoff = 5 * time.Second
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		if err := ch.Ack(last, true); err != nil {
			if ctx.Err() != nil || s.isClosed() {
				return nil
			}
			return fmt.Errorf("amqp: ack %s: %w", s.queue, err)
		}
	}
}

func (s *Source) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// record turns a delivery into a Record.
func (s *Source) record(d amqp.Delivery) bridge.Record {
	rec := bridge.Record{Raw: d.Body, Position: "queue " + s.queue + " delivery " + strconv.FormatUint(d.DeliveryTag, 10)}
	if d.MessageId != "" {
		rec.Position += " message-id " + d.MessageId
	}
	ev, err := s.event(d)
	if err != nil {
		rec.Err = err
		return rec
	}
	rec.Event = ev
	return rec
}

func (s *Source) event(d amqp.Delivery) (*eventv1.CloudEvent, error) {
	ct := strings.ToLower(strings.TrimSpace(d.ContentType))
	if strings.HasPrefix(ct, "application/cloudevents") {
		media, _, _ := strings.Cut(ct, ";")
		if strings.TrimSpace(media) != cloudevent.StructuredContentType {
			return nil, fmt.Errorf("content type %q: only the structured JSON format (%s) is read", d.ContentType, cloudevent.StructuredContentType)
		}
		ev, err := cloudevent.UnmarshalJSON(d.Body)
		if err != nil {
			return nil, fmt.Errorf("structured CloudEvent: %w", err)
		}
		return ev, nil
	}
	if attrs := binaryAttributes(d.Headers); attrs != nil {
		ev, err := cloudevent.FromBinary(cloudevent.Binary{Attributes: attrs, ContentType: d.ContentType, Body: d.Body})
		if err != nil {
			return nil, fmt.Errorf("binary CloudEvent: %w", err)
		}
		return ev, nil
	}
	id := d.MessageId
	switch {
	case id == "":
		sum := sha256.Sum256(d.Body)
		id = "amqp-" + hex.EncodeToString(sum[:])
	case len(id) > 256: // over CloudEvents' limit (a short string on the wire cannot be)
		sum := sha256.Sum256([]byte(id))
		id = "amqp-" + hex.EncodeToString(sum[:])
	}
	return bridge.NewEvent(s.cfg, id, s.source, d.ContentType, d.Body, d.Timestamp), nil
}

// binaryAttributes reads the CloudEvents attributes of a binary-mode
// message from its headers, nil when it has no specversion header.
func binaryAttributes(h amqp.Table) map[string]string {
	var attrs map[string]string
	for k, v := range h {
		name, ok := strings.CutPrefix(k, headerPrefix)
		if !ok {
			if name, ok = strings.CutPrefix(k, headerPrefixJMS); !ok {
				if name, ok = strings.CutPrefix(k, headerPrefixCE); !ok {
					continue
				}
			}
		}
		if name == "" {
			continue
		}
		if attrs == nil {
			attrs = make(map[string]string, len(h))
		}
		attrs[strings.ToLower(name)] = headerString(v)
	}
	if _, ok := attrs["specversion"]; !ok {
		return nil
	}
	return attrs
}

// headerString is a header value in CloudEvents' canonical string form.
func headerString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case bool:
		return strconv.FormatBool(x)
	case int8, int16, int32, int64, int, uint8, uint16, uint32, uint64:
		return fmt.Sprint(x)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// Lag implements bridge.Source: the queue's ready messages (a passive
// declare), not counting the at most one batch delivered and not yet
// acknowledged.
func (s *Source) Lag(ctx context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return -1, errors.New("amqp: source closed")
	}
	if s.lagConn == nil || s.lagConn.IsClosed() {
		c, err := dial(s.url, s.name, "lag")
		if err != nil {
			return -1, err
		}
		s.lagConn = c
	}
	// A failed passive declare closes its channel: one per call.
	ch, err := s.lagConn.Channel()
	if err != nil {
		closeConn(s.lagConn)
		s.lagConn = nil
		return -1, fmt.Errorf("amqp: open channel: %w", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(s.queue, false, false, false, false, nil)
	if err != nil {
		return -1, fmt.Errorf("amqp: inspect queue %s: %w", s.queue, err)
	}
	return int64(q.Messages), nil
}

// Close implements bridge.Source: it ends Run's connection (Run then
// returns nil; the unacknowledged messages go back to the queue) and
// Lag's.
func (s *Source) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.run != nil {
		closeConn(s.run)
	}
	if s.lagConn != nil {
		closeConn(s.lagConn)
	}
	return nil
}
