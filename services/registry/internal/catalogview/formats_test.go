package catalogview

import (
	"strings"
	"testing"
)

// TestAsyncAPIFormats: Protobuf and Avro payloads carry their schemaFormat
// (the message's .proto file; the Avro schema), NONE its content type.
func TestAsyncAPIFormats(t *testing.T) {
	d, err := AsyncAPI(formatsCatalog(), Filter{}, "")
	if err != nil {
		t.Fatal(err)
	}
	pb, ok := d.Components.Schemas["orders.order.shipped"].(MultiFormatSchema)
	if !ok || pb.SchemaFormat != ProtobufSchemaFormat || !strings.Contains(pb.Schema.(string), "message OrderShipped") {
		t.Errorf("protobuf schema: %#v", d.Components.Schemas["orders.order.shipped"])
	}
	if m := d.Components.Messages["orders.order.shipped"]; m.ContentType != "application/protobuf" || m.Payload == nil {
		t.Errorf("protobuf message: %+v", m)
	}
	av, ok := d.Components.Schemas["orders.refund.issued"].(MultiFormatSchema)
	if !ok || av.SchemaFormat != AvroSchemaFormat {
		t.Errorf("avro schema: %#v", d.Components.Schemas["orders.refund.issued"])
	}
	b, _ := d.JSON()
	if i, j := strings.Index(string(b), `"type": "record"`), strings.Index(string(b), `"name": "Refund"`); i < 0 || j < i {
		t.Errorf("avro schema not embedded as written: %s", b)
	}
	if m := d.Components.Messages["orders.scan.stored"]; m.ContentType != "image/png" || m.Payload != nil {
		t.Errorf("bytes message: %+v", m)
	}
}
