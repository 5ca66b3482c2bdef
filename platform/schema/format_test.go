package schema

import (
	"strings"
	"testing"

	"github.com/hamba/avro/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/dynamicpb"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

const orderProto = `syntax = "proto3";
package shop.v1;
import "google/protobuf/timestamp.proto";
message Item { string sku = 1; int32 quantity = 2; }
enum Status { STATUS_UNSPECIFIED = 0; STATUS_PAID = 1; }
message OrderPlaced {
  string order_id = 1;
  repeated Item items = 2;
  Status status = 3;
  google.protobuf.Timestamp placed_at = 4;
  map<string, string> labels = 5;
  repeated int64 codes = 6;
}
`

func protoDef(src string) Definition {
	return Definition{Format: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, Protobuf: &registryv1.ProtobufSchema{
		Message: "shop.v1.OrderPlaced", Files: map[string]string{"shop/v1/order.proto": src},
	}}
}

func mustProto(t testing.TB, src string) *Protobuf {
	t.Helper()
	c, err := CompileDefinition("t", protoDef(src))
	if err != nil {
		t.Fatal(err)
	}
	return c.Protobuf
}

// encode builds the message from protojson text.
func encode(t testing.TB, p *Protobuf, js string) []byte {
	t.Helper()
	m := dynamicpb.NewMessage(p.Message)
	if err := (protojson.UnmarshalOptions{Resolver: p.types}).Unmarshal([]byte(js), m); err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProtobufValidate(t *testing.T) {
	p := mustProto(t, orderProto)
	good := encode(t, p, `{"orderId":"o1","items":[{"sku":"a","quantity":2},{"sku":"b"}],"status":"STATUS_PAID","placedAt":"2026-01-02T03:04:05Z","labels":{"k":"v"},"codes":[1,2,3]}`)
	if vs := p.Validate(good); vs != nil {
		t.Fatalf("valid message refused: %v", vs)
	}
	js, err := p.JSON(good)
	if err != nil || !strings.Contains(string(js), `"orderId":"o1"`) || !strings.Contains(string(js), `"placedAt":"2026-01-02T03:04:05Z"`) {
		t.Fatalf("protojson: %s %v", js, err)
	}
	// An unknown field inside the second item.
	item := protowire.AppendTag(nil, 1, protowire.BytesType)
	item = protowire.AppendString(item, "c")
	item = protowire.AppendTag(item, 9, protowire.VarintType)
	item = protowire.AppendVarint(item, 7)
	bad := append([]byte{}, good...)
	bad = protowire.AppendTag(bad, 2, protowire.BytesType)
	bad = protowire.AppendBytes(bad, item)
	cases := []struct {
		name, data, path, msg string
	}{
		{"unknown nested field", string(bad), "/items/2", "unknown field number 9"},
		{"trailing garbage", string(append(append([]byte{}, good...), 0xff)), "/", "malformed field tag"},
		{"wrong wire type", string(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 3)), "/orderId", "varint value for field order_id"},
		{"bad utf-8", string(protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{0xc3, 0x28})), "/orderId", "not valid UTF-8"},
		{"truncated", string(good[:len(good)-1]), "/", "malformed"},
		{"timestamp out of range", string(protowire.AppendBytes(protowire.AppendTag(nil, 4, protowire.BytesType), protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 2000000000))), "/", "nanos out of range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vs := p.Validate([]byte(c.data))
			if len(vs) != 1 {
				t.Fatalf("got %v, want one violation", vs)
			}
			if !strings.HasPrefix(vs[0].InstanceLocation, c.path) || !strings.Contains(vs[0].Message, c.msg) {
				t.Fatalf("got %s, want at %s: %s", vs[0], c.path, c.msg)
			}
		})
	}
}

func TestProtobufClosedEnumAndRequired(t *testing.T) {
	src := `syntax = "proto2"; package shop.v1;
enum Kind { A = 1; B = 2; }
message OrderPlaced { required string id = 1; optional Kind kind = 2; }`
	p := mustProto(t, src)
	b := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "x")
	if vs := p.Validate(b); vs != nil {
		t.Fatal(vs)
	}
	if vs := p.Validate(protowire.AppendVarint(protowire.AppendTag(append([]byte{}, b...), 2, protowire.VarintType), 5)); len(vs) != 1 || vs[0].InstanceLocation != "/kind" || !strings.Contains(vs[0].Message, "5 is not a value of enum shop.v1.Kind") {
		t.Fatalf("closed enum: %v", vs)
	}
	if vs := p.Validate(nil); len(vs) != 1 || !strings.Contains(vs[0].Message, "required field") {
		t.Fatalf("required: %v", vs)
	}
}

func TestProtobufCompileErrors(t *testing.T) {
	for _, c := range []struct {
		def  Definition
		want string
	}{
		{protoDef("syntax = \"proto3\"; message OrderPlaced { strin x = 1; }"), "do not compile"},
		{protoDef("syntax = \"proto3\"; package shop.v1; message Other {}"), `"shop.v1.OrderPlaced" is not defined`},
		{protoDef("syntax = \"proto3\"; import \"missing.proto\";"), "do not compile"},
		{Definition{Format: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, Protobuf: &registryv1.ProtobufSchema{Message: "a.B", FileDescriptorSet: []byte{0xff}}}, "not a serialized"},
		{Definition{Format: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, Protobuf: &registryv1.ProtobufSchema{Message: "a.B", Files: map[string]string{"/etc/x.proto": ""}}}, "relative path"},
	} {
		_, err := CompileDefinition("t", c.def)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want %q", err, c.want)
		}
	}
	// The descriptor set compiled from files stands on its own.
	p := mustProto(t, orderProto)
	q, err := CompileProtobuf(&registryv1.ProtobufSchema{Message: "shop.v1.OrderPlaced", FileDescriptorSet: p.FileDescriptorSet()})
	if err != nil || q.Message.Fields().Len() != 6 {
		t.Fatal(err)
	}
}

func compat(t *testing.T, mode registryv1.Compatibility, cand Definition, olds ...Definition) []string {
	t.Helper()
	r, err := CheckDefinitionCompatibility(mode, cand, olds)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestProtobufCompatibility(t *testing.T) {
	base := `syntax = "proto3"; package shop.v1;
enum Status { STATUS_UNSPECIFIED = 0; STATUS_PAID = 1; STATUS_VOID = 2; }
message Item { string sku = 1; int32 quantity = 2; }
message OrderPlaced { string order_id = 1; repeated Item items = 2; Status status = 3; %s }`
	v1 := protoDef(strings.Replace(base, "%s", "string note = 4;", 1))
	B := registryv1.Compatibility_COMPATIBILITY_BACKWARD
	cases := []struct {
		name, src string
		want      []string
	}{
		{"add field", strings.Replace(base, "%s", "string note = 4; int64 total = 5;", 1), nil},
		{"rename field", strings.Replace(base, "%s", "string remark = 4;", 1), nil},
		{"remove reserved", strings.Replace(base, "%s", "reserved 4;", 1), nil},
		{"remove unreserved", strings.Replace(base, "%s", "", 1), []string{"BACKWARD: /note: field 4 (note) was removed without reserving its number (reserved 4;): data written with version 1 may not be readable"}},
		{"type change", strings.Replace(base, "%s", "int64 note = 4;", 1), []string{"BACKWARD: /note: field 4 (note) changed type from string to int64: data written with version 1 may not be readable"}},
		{"reuse number with another type", strings.Replace(strings.Replace(base, "%s", "Item note = 4;", 1), "", "", 1), []string{"BACKWARD: /note: field 4 (note) changed type from string to message shop.v1.Item: data written with version 1 may not be readable"}},
		{"cardinality", strings.Replace(base, "%s", "repeated string note = 4;", 1), []string{"BACKWARD: /note: field 4 (note) changed from singular to repeated: data written with version 1 may not be readable"}},
		{"nested", strings.Replace(strings.Replace(base, "int32 quantity = 2;", "string quantity = 2;", 1), "%s", "string note = 4;", 1), []string{"BACKWARD: /items/quantity: field 2 (quantity) changed type from int32 to string: data written with version 1 may not be readable"}},
		{"enum value removed", strings.Replace(strings.Replace(base, " STATUS_VOID = 2;", "", 1), "%s", "string note = 4;", 1), []string{"BACKWARD: /status: enum shop.v1.Status value 2 (STATUS_VOID) was removed without reserving its number: data written with version 1 may not be readable"}},
		{"enum value reserved", strings.Replace(strings.Replace(base, " STATUS_VOID = 2;", " reserved 2;", 1), "%s", "string note = 4;", 1), nil},
		{"oneof", strings.Replace(base, "%s", "oneof extra { string note = 4; }", 1), []string{"BACKWARD: /note: field 4 (note) moved into oneof extra: data written with version 1 may not be readable"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := compat(t, B, protoDef(c.src), v1)
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
	// A number reserved by the latest version cannot come back.
	v2 := protoDef(strings.Replace(base, "%s", "reserved 4;", 1))
	got := compat(t, B, protoDef(strings.Replace(base, "%s", "bytes blob = 4;", 1)), v1, v2)
	if len(got) != 1 || !strings.Contains(got[0], "/blob: field 4 (blob) reuses a number the old version reserved") {
		t.Fatalf("reserved reuse: %v", got)
	}
	// Transitive modes compare with every version; NONE allows anything.
	if got := compat(t, registryv1.Compatibility_COMPATIBILITY_BACKWARD_TRANSITIVE, protoDef(strings.Replace(base, "%s", "bytes blob = 4;", 1)), v1, v2); len(got) != 2 {
		t.Fatalf("transitive: %v", got)
	}
	if got := compat(t, registryv1.Compatibility_COMPATIBILITY_FORWARD, protoDef(strings.Replace(base, "%s", "int64 note = 4;", 1)), v1); len(got) != 1 || !strings.HasPrefix(got[0], "FORWARD: /note:") || !strings.HasSuffix(got[0], "not be readable by version 1") {
		t.Fatalf("forward: %v", got)
	}
	if got := compat(t, registryv1.Compatibility_COMPATIBILITY_NONE, protoDef(strings.Replace(base, "%s", "int64 note = 4;", 1)), v1); got != nil {
		t.Fatalf("none: %v", got)
	}
	// The format cannot change.
	if got := compat(t, B, Definition{Format: registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, Text: `"string"`}, v1); len(got) != 1 || !strings.Contains(got[0], "schema_format changed from PROTOBUF to AVRO") {
		t.Fatalf("format change: %v", got)
	}
}

const orderAvro = `{"type":"record","name":"OrderPlaced","namespace":"shop","fields":[
 {"name":"order_id","type":"string"},
 {"name":"amount","type":"long"},
 {"name":"tags","type":{"type":"array","items":"string"}},
 {"name":"note","type":["null","string"],"default":null},
 {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}},
 {"name":"blob","type":"bytes"}
]}`

func avroDef(text string) Definition {
	return Definition{Format: registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, Text: text}
}

func TestAvroValidate(t *testing.T) {
	c, err := CompileDefinition("t", avroDef(orderAvro))
	if err != nil {
		t.Fatal(err)
	}
	good, err := avro.Marshal(c.Avro.Schema, map[string]any{"order_id": "o1", "amount": int64(42), "tags": []any{"x", "y"}, "note": "hi", "kind": "B", "blob": []byte{0, 0xff}})
	if err != nil {
		t.Fatal(err)
	}
	if vs := c.ValidateBinary(good); vs != nil {
		t.Fatal(vs)
	}
	js, ok, err := c.RenderJSON(good)
	if want := `{"order_id":"o1","amount":42,"tags":["x","y"],"note":{"string":"hi"},"kind":"B","blob":"\u0000ÿ"}`; !ok || err != nil || string(js) != want {
		t.Fatalf("json %s %v, want %s", js, err, want)
	}
	// order_id "o1" is 0x04 'o' '1'; amount follows.
	badUTF8 := append([]byte{}, good...)
	badUTF8[1] = 0xff
	badEnum := append([]byte{}, good...)
	badEnum[len(good)-4] = 0x08 // kind index 4
	cases := []struct {
		name string
		data []byte
		path string
		msg  string
	}{
		{"trailing", append(append([]byte{}, good...), 0), "/", "1 trailing bytes after the value"},
		{"truncated", good[:len(good)-1], "/blob", "bytes of 2 bytes, but 1 remain"},
		{"utf8", badUTF8, "/order_id", "not valid UTF-8"},
		{"enum", badEnum, "/kind", "enum index 4 out of range"},
		{"empty", nil, "/order_id", "malformed string"},
	}
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			vs := c.ValidateBinary(cs.data)
			if len(vs) != 1 || vs[0].InstanceLocation != cs.path || !strings.Contains(vs[0].Message, cs.msg) {
				t.Fatalf("got %v, want %s: %s", vs, cs.path, cs.msg)
			}
		})
	}
	// A huge block count of zero-byte items is refused, not looped on.
	n, _ := CompileAvro(`{"type":"array","items":"null"}`)
	if vs := n.Validate([]byte{0xfe, 0xff, 0xff, 0xff, 0x0f, 0}); len(vs) != 1 || !strings.Contains(vs[0].Message, "more than") {
		t.Fatalf("block count: %v", vs)
	}
}

func TestAvroCompatibility(t *testing.T) {
	v1 := avroDef(`{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"}]}}]}`)
	B := registryv1.Compatibility_COMPATIBILITY_BACKWARD
	if got := compat(t, B, avroDef(`{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"long"}]}},{"name":"b","type":"int","default":0}]}`), v1); got != nil {
		t.Fatalf("int to long and a defaulted field: %v", got)
	}
	got := compat(t, B, avroDef(`{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"},{"name":"y","type":"int"}]}}]}`), v1)
	if len(got) != 1 || got[0] != "BACKWARD: /inner: reader field y is missing in writer schema and has no default: data written with version 1 may not be readable" {
		t.Fatalf("missing default: %v", got)
	}
	got = compat(t, registryv1.Compatibility_COMPATIBILITY_FULL, avroDef(`{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"long"}]}}]}`), v1)
	if len(got) != 1 || !strings.HasPrefix(got[0], "FULL: /inner/x: reader schema int not compatible with writer schema long") || !strings.HasSuffix(got[0], "by version 1") {
		t.Fatalf("full: %v", got)
	}
	if _, err := CheckDefinitionCompatibility(B, avroDef(`{"type":"nope"}`), []Definition{v1}); err == nil {
		t.Fatal("invalid candidate accepted")
	}
}

func TestNoneFormat(t *testing.T) {
	def := Definition{Format: registryv1.SchemaFormat_SCHEMA_FORMAT_NONE, ContentType: "application/octet-stream"}
	if _, err := CompileDefinition("t", Definition{Format: registryv1.SchemaFormat_SCHEMA_FORMAT_NONE}); err == nil || !strings.Contains(err.Error(), "content_type is required") {
		t.Fatal(err)
	}
	if got := compat(t, registryv1.Compatibility_COMPATIBILITY_BACKWARD, Definition{Format: registryv1.SchemaFormat_SCHEMA_FORMAT_NONE, ContentType: "image/png"}, def); len(got) != 1 || got[0] != "BACKWARD: /: content_type changed from application/octet-stream to image/png: data written with version 1 may not be readable" {
		t.Fatal(got)
	}
	if got := compat(t, registryv1.Compatibility_COMPATIBILITY_BACKWARD, def, def); got != nil {
		t.Fatal(got)
	}
}
