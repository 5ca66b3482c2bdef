package schema

import "testing"

const benchOrderSchema = `{
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

var benchOrder = []byte(`{"order_id":"ord_00001234","customer_id":"cus_001234","amount":1334,"currency":"EUR","quantity":3,"note":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)

func BenchmarkValidateOrder(b *testing.B) {
	s, err := Compile("bench", benchOrderSchema)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if v, err := s.Validate(benchOrder); err != nil || len(v) > 0 {
			b.Fatal(v, err)
		}
	}
}
