package bench

import (
	"fmt"
	"strings"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

// EventType is the type every phase publishes.
const EventType = "bench.order.placed"

// EventSource is the CloudEvents source of every event.
const EventSource = "//bench.herald.local/orders"

// Schema is the JSON Schema (draft 2020-12) of EventType: an order with
// required string and integer fields, so that validation does real work.
const Schema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["order_id", "customer_id", "amount", "currency", "quantity", "note"],
  "properties": {
    "order_id":    {"type": "string", "pattern": "^ord_[0-9]+$"},
    "customer_id": {"type": "string", "minLength": 1},
    "amount":      {"type": "integer", "minimum": 0},
    "currency":    {"type": "string", "pattern": "^[A-Z]{3}$"},
    "quantity":    {"type": "integer", "minimum": 1, "maximum": 1000},
    "note":        {"type": "string"}
  },
  "additionalProperties": false
}`

// payload returns event i's JSON data, padded with the note field to about
// size bytes (never less than the required fields need).
func payload(i, size int) string {
	head := fmt.Sprintf(`{"order_id":"ord_%08d","customer_id":"cus_%06d","amount":%d,"currency":"EUR","quantity":%d,"note":"`,
		i, i%100000, 100+i%99000, 1+i%9)
	pad := max(0, size-len(head)-2)
	return head + strings.Repeat("x", pad) + `"}`
}

// makeEvents returns n CloudEvents with ids "<prefix>-<i>" and the payloads
// of indices [0, n): every phase sends the same data, under its own ids,
// so that each (source, id) is new to the dedupe check.
func makeEvents(prefix string, n, payloadBytes int) []*eventv1.CloudEvent {
	evs := make([]*eventv1.CloudEvent, n)
	for i := range evs {
		evs[i] = &eventv1.CloudEvent{
			Id: fmt.Sprintf("%s-%d", prefix, i), Source: EventSource, SpecVersion: "1.0", Type: EventType,
			Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
				"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
			},
			Data: &eventv1.CloudEvent_TextData{TextData: payload(i, payloadBytes)},
		}
	}
	return evs
}
