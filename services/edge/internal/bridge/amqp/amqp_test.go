package amqp

import (
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestBrokerURL(t *testing.T) {
	t.Parallel() // the shared node and the outage test's own boot at once
	cases := []struct {
		url, secret, want, err string
	}{
		{url: "amqp://herald@mq.example:5672/prod", secret: "s3cr/t?", want: "amqp://herald:s3cr%2Ft%3F@mq.example:5672/prod"},
		{url: "amqps://mq.example/", want: "amqps://mq.example/"},
		{url: "amqp://mq.example/", secret: "x", err: "user name"},
		{url: "http://mq.example/", err: "scheme"},
		{url: "amqp:///", err: "no host"},
		{url: "", err: "scheme"},
	}
	for _, c := range cases {
		got, err := brokerURL(bridge.Config{Secret: c.secret, Bridge: &registryv1.Bridge{System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: c.url}}}})
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: %q %v, want an error about %s", c.url, got, err, c.err)
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("%q: %q %v, want %q", c.url, got, err, c.want)
		}
		if err != nil && c.secret != "" && strings.Contains(err.Error(), c.secret) {
			t.Errorf("%q: the error shows the secret: %v", c.url, err)
		}
	}
	if _, err := NewSource(sourceConfig("amqp://guest:guest@127.0.0.1:1/", "")); err == nil {
		t.Error("a source without a queue was accepted")
	}
}

// FuzzSourceEvent: whatever a message holds, the source builds a valid
// event or says why not, and never panics.
func FuzzSourceEvent(f *testing.F) {
	structured, _ := cloudevent.MarshalJSON(jsonEvent("s1", "a.b.c"))
	f.Add(cloudevent.StructuredContentType, "", "", "", structured)
	f.Add("application/json", "cloudEvents:", "1.0", "m1", []byte(`{"a":1}`))
	f.Add("", "ce_", "0.3", "", []byte{0xff, 0})
	f.Add("application/cloudevents+json; charset=utf-8", "", "", "", []byte(`{"specversion":"1.0"}`))
	f.Add("text/plain", "cloudEvents_", "1.0", "", []byte("hi"))
	f.Add("", "", "", "", []byte("x"))
	f.Add("", "", "", strings.Repeat("0", 300), []byte("0")) // a message-id over CloudEvents' 256
	f.Fuzz(func(t *testing.T, ct, prefix, spec, msgID string, body []byte) {
		queue := "q:" + ct // queue names may hold anything, up to 255 bytes
		if len(queue) > 255 {
			queue = queue[:255]
		}
		src := &Source{queue: queue, source: sourceURI(queue), cfg: sourceConfig("amqp://guest@127.0.0.1:1/", queue)}
		d := amqp.Delivery{ContentType: ct, MessageId: msgID, Body: body, Timestamp: time.Unix(1700000000, 0)}
		if prefix != "" {
			d.Headers = amqp.Table{prefix + "specversion": spec, prefix + "id": msgID, prefix + "source": "//f", prefix + "type": "f.u.z", prefix + "time": time.Unix(5, 0)}
		}
		rec := src.record(d)
		if (rec.Event == nil) == (rec.Err == nil) {
			t.Fatalf("event %v and err %v", rec.Event, rec.Err)
		}
		if rec.Event != nil {
			if err := cloudevent.Validate(rec.Event); err != nil {
				t.Fatalf("invalid event %v: %v", rec.Event, err)
			}
		}
	})
}
