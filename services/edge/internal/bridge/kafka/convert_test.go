package kafka

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heraldmesh/herald/platform/cloudevent"
)

// convert reads whatever a topic holds without panicking: an event that
// validates, or an error with the record's position.
func FuzzConvert(f *testing.F) {
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1}}`), "content-type", "application/cloudevents+json", "", "", []byte("k"))
	f.Add([]byte(`{"a":1}`), "ce_specversion", "1.0", "ce_id", "x", []byte(nil))
	f.Add([]byte{0xff, 0xfe}, "ce_time", "yesterday", "content-type", "text/plain", []byte{0xff})
	f.Add([]byte(`[]`), "content-type", "application/cloudevents-batch+json", "ce_specversion", "\xff", []byte("k"))
	s := &Source{cfg: kafkaCfg("127.0.0.1:1", "t", sourceDir, false)}
	f.Fuzz(func(t *testing.T, value []byte, h1, v1, h2, v2 string, key []byte) {
		r := &kgo.Record{Topic: "t", Partition: 1, Offset: 2, Key: key, Value: value, Timestamp: time.Unix(1, 0),
			Headers: []kgo.RecordHeader{{Key: h1, Value: []byte(v1)}, {Key: h2, Value: []byte(v2)}}}
		rec := s.convert(r)
		if rec.Position != "t/1@2" {
			t.Fatalf("position %q", rec.Position)
		}
		if (rec.Event == nil) == (rec.Err == nil) {
			t.Fatalf("event %v and error %v", rec.Event, rec.Err)
		}
		if rec.Event != nil {
			if err := cloudevent.Validate(rec.Event); err != nil {
				t.Fatalf("an invalid event: %v: %v", err, rec.Event)
			}
		}
	})
}

// A plain record's id is its position, within CloudEvents' 256
// characters even for a topic name of Kafka's longest.
func TestConvertIDs(t *testing.T) {
	s := &Source{cfg: kafkaCfg("127.0.0.1:1", "t", sourceDir, false)}
	long := strings.Repeat("t", 249)
	for _, c := range []struct {
		topic string
		want  string
	}{
		{"orders", "orders-3-9223372036854775807"},
		{long, ""},
	} {
		rec := s.convert(&kgo.Record{Topic: c.topic, Partition: 3, Offset: math.MaxInt64, Value: []byte("x")})
		if rec.Err != nil {
			t.Fatal(rec.Err)
		}
		id := rec.Event.GetId()
		if c.want != "" && id != c.want || len(id) > 256 || !strings.HasSuffix(id, "-3-9223372036854775807") {
			t.Errorf("topic of %d characters: id %q", len(c.topic), id)
		}
		if again := s.convert(&kgo.Record{Topic: c.topic, Partition: 3, Offset: math.MaxInt64}); again.Event.GetId() != id {
			t.Errorf("the same record read twice: ids %q and %q", id, again.Event.GetId())
		}
	}
}
