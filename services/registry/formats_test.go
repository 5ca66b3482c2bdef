package registry_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

const shopProto = `syntax = "proto3";
package shop.v1;
message OrderPlaced { string order_id = 1; int64 total = 2; %s }
`

func protoSchema(extra string) *registryv1.ProtobufSchema {
	return &registryv1.ProtobufSchema{Message: "shop.v1.OrderPlaced", Files: map[string]string{"shop/v1/order.proto": strings.Replace(shopProto, "%s", extra, 1)}}
}

// TestSchemaFormats: Protobuf, Avro and NONE types are stored with their
// format, compiled (a protobuf schema gets its descriptor set), and their
// versions checked under the compatibility mode.
func TestSchemaFormats(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	create := func(et *registryv1.EventType) (*registryv1.EventType, error) {
		res, err := e.admin.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetEventType(), nil
	}
	pb, err := create(&registryv1.EventType{Name: "shop.order.placed", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, ProtobufSchema: protoSchema("string note = 3;"),
		Examples: []*registryv1.Example{{Name: "one", Data: `{"orderId":"o1","total":"5"}`}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(pb.GetProtobufSchema().GetFileDescriptorSet()) == 0 || pb.GetSchemaFormat() != registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF {
		t.Fatalf("stored protobuf type: %v", pb)
	}
	_, err = create(&registryv1.EventType{Name: "shop.order.bad", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, ProtobufSchema: protoSchema("strin x = 3;")})
	wantCode(t, "protobuf that does not compile", err, connect.CodeInvalidArgument, "event_type.protobuf_schema: .proto files do not compile")
	_, err = create(&registryv1.EventType{Name: "shop.order.example", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, ProtobufSchema: protoSchema(""),
		Examples: []*registryv1.Example{{Name: "one", Data: `{"orderId":"o1","nope":1}`}}})
	wantCode(t, "example not of the message", err, connect.CodeInvalidArgument, `example "one" does not match schema version 1`, "not the message's protojson")

	add := func(req *registryv1.CreateSchemaVersionRequest) (*registryv1.SchemaVersion, error) {
		res, err := e.admin.CreateSchemaVersion(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetSchemaVersion(), nil
	}
	_, err = add(&registryv1.CreateSchemaVersionRequest{EventType: "shop.order.placed", ProtobufSchema: protoSchema("")})
	wantCode(t, "removed protobuf field", err, connect.CodeFailedPrecondition,
		"BACKWARD: /note: field 3 (note) was removed without reserving its number (reserved 3;): data written with version 1 may not be readable")
	verdict := must(e.admin.CheckCompatibility(ctx, connect.NewRequest(&registryv1.CheckCompatibilityRequest{EventType: "shop.order.placed", ProtobufSchema: protoSchema("bytes note = 3;")}))).msg(t)
	if verdict.GetCompatible() || len(verdict.GetReasons()) != 1 || !strings.Contains(verdict.GetReasons()[0], "/note: field 3 (note) changed type from string to bytes") {
		t.Fatalf("check: %v", verdict)
	}
	v2, err := add(&registryv1.CreateSchemaVersionRequest{EventType: "shop.order.placed", ProtobufSchema: protoSchema("reserved 3; string currency = 4;")})
	if err != nil || v2.GetVersion() != 2 || v2.GetSchemaFormat() != registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF || len(v2.GetProtobufSchema().GetFileDescriptorSet()) == 0 {
		t.Fatalf("compatible protobuf version: %v %v", v2, err)
	}
	_, err = add(&registryv1.CreateSchemaVersionRequest{EventType: "shop.order.placed", Schema: `{}`})
	wantCode(t, "JSON text for a protobuf type", err, connect.CodeInvalidArgument, "schema must be empty for a PROTOBUF type")

	avroV1 := `{"type":"record","name":"Refund","fields":[{"name":"id","type":"string"}]}`
	if _, err := create(&registryv1.EventType{Name: "shop.refund.issued", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, Schema: avroV1,
		Compatibility: registryv1.Compatibility_COMPATIBILITY_FULL}); err != nil {
		t.Fatal(err)
	}
	_, err = create(&registryv1.EventType{Name: "shop.refund.bad", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, Schema: `{"type":"record"}`})
	wantCode(t, "invalid avro", err, connect.CodeInvalidArgument, "event_type.schema: not a valid Avro schema")
	_, err = add(&registryv1.CreateSchemaVersionRequest{EventType: "shop.refund.issued", Schema: `{"type":"record","name":"Refund","fields":[{"name":"id","type":"string"},{"name":"amount","type":"long"}]}`})
	wantCode(t, "avro field without default under FULL", err, connect.CodeFailedPrecondition,
		"FULL: /: reader field amount is missing in writer schema and has no default: data written with version 1 may not be readable")
	if _, err := add(&registryv1.CreateSchemaVersionRequest{EventType: "shop.refund.issued", Schema: `{"type":"record","name":"Refund","fields":[{"name":"id","type":"string"},{"name":"amount","type":"long","default":0}]}`}); err != nil {
		t.Fatalf("defaulted avro field under FULL: %v", err)
	}

	_, err = create(&registryv1.EventType{Name: "shop.blob.stored", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_NONE})
	wantCode(t, "NONE without content type", err, connect.CodeInvalidArgument, "content_type is required")
	if _, err := create(&registryv1.EventType{Name: "shop.blob.stored", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_NONE, ContentType: "application/octet-stream"}); err != nil {
		t.Fatal(err)
	}
	_, err = add(&registryv1.CreateSchemaVersionRequest{EventType: "shop.blob.stored", ContentType: "image/png"})
	wantCode(t, "content type change", err, connect.CodeFailedPrecondition, "BACKWARD: /: content_type changed from application/octet-stream to image/png")

	got := must(e.admin.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "shop.order.placed"}))).msg(t).GetEventType()
	if got.GetSchemaVersion() != 2 || !strings.Contains(got.GetProtobufSchema().GetFiles()["shop/v1/order.proto"], "currency") {
		t.Fatalf("latest protobuf type: %v", got)
	}
}
