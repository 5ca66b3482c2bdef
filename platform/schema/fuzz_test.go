package schema

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// FuzzProtobufValidate: Validate never panics, and what it accepts decodes
// without unknown fields and renders as JSON.
func FuzzProtobufValidate(f *testing.F) {
	p := mustProto(f, orderProto)
	f.Add(encode(f, p, `{"orderId":"o1","items":[{"sku":"a","quantity":2}],"status":"STATUS_PAID","placedAt":"2026-01-02T03:04:05Z","labels":{"k":"v"},"codes":[1,2,3]}`))
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x01, 'x', 0xff})
	// The same message without the Timestamp: Validate then skips the full
	// decode, which must not matter.
	plain := mustProto(f, strings.Replace(orderProto, "google.protobuf.Timestamp placed_at = 4;", "", 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAccepted(t, p, data)
		checkAccepted(t, plain, data)
	})
}

func checkAccepted(t *testing.T, p *Protobuf, data []byte) {
	{
		if vs := p.Validate(data); vs != nil {
			return
		}
		m := dynamicpb.NewMessage(p.Message)
		if err := (proto.UnmarshalOptions{Resolver: p.types}).Unmarshal(data, m); err != nil {
			t.Fatalf("accepted but does not decode: %v", err)
		}
		if hasUnknown(m) {
			t.Fatal("accepted data with unknown fields")
		}
		js, err := p.JSON(data)
		if err != nil || !json.Valid(js) {
			t.Fatalf("accepted but does not render: %v", err)
		}
	}
}

func hasUnknown(m proto.Message) bool {
	r := m.ProtoReflect()
	if len(r.GetUnknown()) > 0 {
		return true
	}
	found := false
	r.Range(func(fd protoreflectFieldDescriptor, v protoreflectValue) bool {
		switch {
		case fd.IsMap():
			v.Map().Range(func(_ protoreflectMapKey, mv protoreflectValue) bool {
				if fd.MapValue().Message() != nil && hasUnknown(mv.Message().Interface()) {
					found = true
				}
				return !found
			})
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				if hasUnknown(v.List().Get(i).Message().Interface()) {
					found = true
				}
			}
		case fd.Message() != nil:
			found = hasUnknown(v.Message().Interface())
		}
		return !found
	})
	return found
}

// FuzzAvroValidate: Validate never panics, what it accepts renders as
// JSON, and the library decodes it too.
func FuzzAvroValidate(f *testing.F) {
	a, err := CompileAvro(orderAvro)
	if err != nil {
		f.Fatal(err)
	}
	good, err := avro.Marshal(a.Schema, map[string]any{"order_id": "o1", "amount": int64(42), "tags": []any{"x"}, "note": nil, "kind": "A", "blob": []byte{1}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x02, 'x', 0x01, 0xfe, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		if vs := a.Validate(data); vs != nil {
			return
		}
		js, err := a.JSON(data)
		if err != nil || !json.Valid(js) {
			t.Fatalf("accepted but does not render: %v %s", err, js)
		}
		var v any
		if err := avro.Unmarshal(a.Schema, data, &v); err != nil {
			t.Fatalf("accepted but the library does not decode it: %v", err)
		}
	})
}

type (
	protoreflectFieldDescriptor = protoreflect.FieldDescriptor
	protoreflectValue           = protoreflect.Value
	protoreflectMapKey          = protoreflect.MapKey
)
