package schema

import (
	"testing"

	"github.com/hamba/avro/v2"
)

func BenchmarkProtobufValidate(b *testing.B) {
	p := mustProto(b, orderProto)
	data := encode(b, p, `{"orderId":"o1","items":[{"sku":"a","quantity":2},{"sku":"b"}],"status":"STATUS_PAID","labels":{"k":"v"},"codes":[1,2,3]}`)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if vs := p.Validate(data); vs != nil {
			b.Fatal(vs)
		}
	}
}

func BenchmarkAvroValidate(b *testing.B) {
	a, err := CompileAvro(orderAvro)
	if err != nil {
		b.Fatal(err)
	}
	data, err := avro.Marshal(a.Schema, map[string]any{"order_id": "o1", "amount": int64(42), "tags": []any{"x", "y"}, "note": "hi", "kind": "B", "blob": []byte{0, 0xff}})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if vs := a.Validate(data); vs != nil {
			b.Fatal(vs)
		}
	}
}

func BenchmarkProtobufValidatePlain(b *testing.B) {
	p := mustProto(b, `syntax = "proto3"; package shop.v1;
message Item { string sku = 1; int32 quantity = 2; }
message OrderPlaced { string order_id = 1; repeated Item items = 2; map<string, string> labels = 5; repeated int64 codes = 6; }`)
	data := encode(b, p, `{"orderId":"o1","items":[{"sku":"a","quantity":2},{"sku":"b"}],"labels":{"k":"v"},"codes":[1,2,3]}`)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if vs := p.Validate(data); vs != nil {
			b.Fatal(vs)
		}
	}
}
