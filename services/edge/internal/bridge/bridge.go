// Package bridge runs the catalog's bridges: sinks that deliver events
// from a durable subscription to Kafka, AMQP, MQTT or a Parquet data lake,
// and sources that publish what those systems carry into the mesh through
// the router's Publish, as the bridge's application.
//
// The engine (engine.go) owns what every bridge shares: one process at a
// time runs a bridge (a lease in Redis), deliveries stay pending until the
// far side confirms them, retries follow the bridge's schedule, what is
// given up on is dead-lettered with the reason, delivered usage goes to
// metering per channel. The systems plug in as a Sink or a Source.
package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/heraldmesh/herald/platform/cloudevent"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Message is one event on its way to a sink.
type Message struct {
	// Cursor is the event's position in the log: unique and, per log
	// stream, increasing. A sink that keeps state (the lake's file names)
	// may use it to skip what it already holds.
	Cursor string
	// Event is the event, its data already rendered the bridge's way
	// (json_data).
	Event *eventv1.CloudEvent
	// Key is the event's partitionkey attribute, else its id: a Kafka
	// record key.
	Key string
}

// Sink writes events to an external system.
type Sink interface {
	// Send hands msgs to the far side. For each message it calls done(i,
	// err) exactly once, from any goroutine, possibly after Send returned:
	// err nil once the far side holds it durably (Kafka acks=all, an AMQP
	// publisher confirm, an MQTT PUBACK/PUBCOMP, a committed Parquet file);
	// otherwise why not, wrapped in Permanent when trying again cannot
	// help (the record is too large for the topic, say). Messages of one
	// Key are handed over in log order and must reach the far side in that
	// order. Send must not block for long: it may queue.
	Send(ctx context.Context, msgs []Message, done func(i int, err error))
	// Close flushes what can be flushed within ctx and ends the
	// connection; messages not confirmed by then get done(i, err).
	Close(ctx context.Context) error
}

// Unordered is implemented by a Sink whose far side has no order to keep
// (the lake: each row carries its cursor, and files commit independently,
// so readers order by cursor): the runner hands over every message at
// once instead of one per key at a time. Without it, a key's next message
// waits for the previous one's confirmation, which for the lake is the
// commit of its file, up to the file's max age.
type Unordered interface {
	Sink
	Unordered()
}

// Record is one record read by a source, turned into an event.
type Record struct {
	// Event is the record as a CloudEvent: read per the system's binding
	// when it is one (binary or structured), else built by the source
	// with NewEvent. nil when the record could not be read: Err says why.
	Event *eventv1.CloudEvent
	// Err: the record is unreadable; it is dead-lettered with this reason.
	Err error
	// Raw is the record's payload as received, kept with a dead letter.
	Raw []byte
	// Position says where the record was in the far side (topic/partition
	// and offset, queue and delivery tag...), for dead letters and logs.
	Position string
}

// PublishFunc publishes a batch of records through the router. It returns
// once Herald acknowledged every event of the batch (stored, or refused
// for good and dead-lettered by the engine); a non-nil error means nothing
// can be assumed (the router is down): the source must not commit and
// should hand the same records again later.
type PublishFunc func(ctx context.Context, recs []Record) error

// Source reads records from an external system.
type Source interface {
	// Run reads records until ctx ends or the connection fails, passing
	// them to publish in batches (at most batch records, or what arrived
	// within a short wait), and commits its offset or acknowledges its
	// messages only after publish returned nil for them. After a crash
	// the far side hands the uncommitted records again; the router's
	// dedupe (same source and id) absorbs the repeats, so a source must
	// build the same id for the same record every time.
	Run(ctx context.Context, batch int, publish PublishFunc) error
	// Lag is how far the source is behind the far side's end (records),
	// or -1 when the system cannot tell.
	Lag(ctx context.Context) (int64, error)
	// Close ends the connection.
	Close() error
}

// Config is what a Sink or Source is built from.
type Config struct {
	Bridge *registryv1.Bridge
	// Secret is the bridge's secret, unsealed ("" when none).
	Secret string
	// Name is the bridge's name, for client ids and defaults.
	Name string
}

// permanent marks an error that trying again cannot fix.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// Permanent wraps err so that the engine dead-letters the message at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

// IsPermanent reports whether err was wrapped by Permanent.
func IsPermanent(err error) bool {
	var p permanent
	return errors.As(err, &p)
}

// NewEvent builds the event of a record that is not a CloudEvent, of the
// bridge's source event type. id must be the same every time the same
// record is read (a Kafka topic-partition-offset, an AMQP message-id): it
// is what dedupes a record read twice. contentType "" takes JSON when the
// payload is JSON, else application/octet-stream.
func NewEvent(cfg Config, id, source, contentType string, payload []byte, at time.Time) *eventv1.CloudEvent {
	if contentType == "" {
		contentType = "application/octet-stream"
		if json.Valid(payload) {
			contentType = "application/json"
		}
	}
	b := cloudevent.Binary{
		Attributes:  map[string]string{"specversion": cloudevent.SpecVersion, "id": id, "source": source, "type": cfg.Bridge.GetSource().GetEventType()},
		ContentType: contentType,
		Body:        payload,
	}
	if !at.IsZero() {
		b.Attributes["time"] = at.UTC().Format(time.RFC3339Nano)
	}
	ev, err := cloudevent.FromBinary(b)
	if err != nil {
		// Only an empty id or source can fail, which is the caller's bug.
		panic(fmt.Sprintf("bridge.NewEvent: %v", err))
	}
	return ev
}
