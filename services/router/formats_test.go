package router_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/hamba/avro/v2"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

func binaryEvent(typ, id, ct string, data []byte) *eventv1.CloudEvent {
	ev := &eventv1.CloudEvent{Id: id, Source: "/shop", SpecVersion: "1.0", Type: typ, Data: &eventv1.CloudEvent_BinaryData{BinaryData: data}}
	if ct != "" {
		ev.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: ct}}}
	}
	return ev
}

// TestPublishFormats: events of Protobuf, Avro and NONE types are checked
// against their schema; refusals name the field.
func TestPublishFormats(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, et := range []*registryv1.EventType{
		{Name: "shop.order.placed", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, ProtobufSchema: &registryv1.ProtobufSchema{
			Message: "shop.v1.OrderPlaced", Files: map[string]string{"order.proto": `syntax = "proto3"; package shop.v1;
message Line { string sku = 1; }
message OrderPlaced { string order_id = 1; repeated Line lines = 2; }`}}},
		{Name: "shop.refund.issued", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, Schema: `{"type":"record","name":"Refund","fields":[{"name":"id","type":"string"},{"name":"cents","type":"long"}]}`},
		{Name: "shop.blob.stored", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_NONE, ContentType: "application/octet-stream"},
	} {
		if _, err := e.registry.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et})); err != nil {
			t.Fatal(err)
		}
	}
	_, key := e.createApp(t, "shop")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 0)
	client := routerClient(addr, key)

	line := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "sku-1")
	order := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "o-1")
	order = protowire.AppendBytes(protowire.AppendTag(order, 2, protowire.BytesType), line)
	badLine := protowire.AppendVarint(protowire.AppendTag(append([]byte{}, line...), 7, protowire.VarintType), 1)
	badOrder := protowire.AppendBytes(protowire.AppendTag(append([]byte{}, order...), 2, protowire.BytesType), badLine)
	refund, err := avro.Marshal(avro.MustParse(`{"type":"record","name":"Refund","fields":[{"name":"id","type":"string"},{"name":"cents","type":"long"}]}`), map[string]any{"id": "r-1", "cents": int64(250)})
	if err != nil {
		t.Fatal(err)
	}
	protoAny := &eventv1.CloudEvent{Id: "p-any", Source: "/shop", SpecVersion: "1.0", Type: "shop.order.placed",
		Data: &eventv1.CloudEvent_ProtoData{ProtoData: &anypb.Any{TypeUrl: "type.googleapis.com/shop.v1.OrderPlaced", Value: order}}}
	wrongAny := &eventv1.CloudEvent{Id: "p-wrong", Source: "/shop", SpecVersion: "1.0", Type: "shop.order.placed",
		Data: &eventv1.CloudEvent_ProtoData{ProtoData: &anypb.Any{TypeUrl: "type.googleapis.com/shop.v1.Other", Value: order}}}

	cases := []struct {
		name string
		ev   *eventv1.CloudEvent
		want string // "" accepted; else a fragment of the refusal
		path string
	}{
		{"protobuf binary", binaryEvent("shop.order.placed", "p-1", "application/protobuf", order), "", ""},
		{"protobuf any", protoAny, "", ""},
		{"protobuf unknown field", binaryEvent("shop.order.placed", "p-2", "", badOrder), "data does not match the PROTOBUF schema of shop.order.placed: /lines/1: unknown field number 7", "/lines/1"},
		{"protobuf trailing garbage", binaryEvent("shop.order.placed", "p-3", "", append(append([]byte{}, order...), 0x80)), "malformed field tag", "/"},
		{"protobuf as text", event("shop.order.placed", "p-4", `{"orderId":"o"}`), "data must be the protobuf encoding of shop.v1.OrderPlaced", ""},
		{"protobuf wrong any", wrongAny, `proto_data holds "type.googleapis.com/shop.v1.Other"`, ""},
		{"protobuf wrong content type", binaryEvent("shop.order.placed", "p-5", "application/json", order), "datacontenttype application/json is not protobuf", ""},
		{"avro", binaryEvent("shop.refund.issued", "a-1", "application/avro", refund), "", ""},
		{"avro trailing garbage", binaryEvent("shop.refund.issued", "a-2", "", append(append([]byte{}, refund...), 1, 2)), "/: 2 trailing bytes after the value", "/"},
		{"avro truncated", binaryEvent("shop.refund.issued", "a-3", "", refund[:4]), "/cents: malformed long", "/cents"},
		{"bytes", binaryEvent("shop.blob.stored", "b-1", "application/octet-stream", []byte{0, 1, 2, 0xff}), "", ""},
		{"bytes without content type", binaryEvent("shop.blob.stored", "b-2", "", []byte{9}), "", ""},
		{"bytes of another type", binaryEvent("shop.blob.stored", "b-3", "image/png", []byte{9}), "datacontenttype image/png is not the content type of shop.blob.stored, application/octet-stream", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mustPublish(t, client, c.ev)[0]
			if c.want == "" {
				if r.GetError() != nil || r.GetCursor() == "" {
					t.Fatalf("refused: %v", r.GetError())
				}
				return
			}
			if connect.Code(r.GetError().GetCode()) != connect.CodeInvalidArgument || !strings.Contains(r.GetError().GetMessage(), c.want) {
				t.Fatalf("got %v, want INVALID_ARGUMENT with %q", r.GetError(), c.want)
			}
			if c.path != "" && (len(r.GetError().GetViolations()) != 1 || r.GetError().GetViolations()[0].GetInstanceLocation() != c.path) {
				t.Fatalf("violations %v, want one at %s", r.GetError().GetViolations(), c.path)
			}
		})
	}
	// The log holds what was accepted: Avro events stamped with their
	// schema version, bytes given the declared content type.
	if n := e.streamLen(t, "shop.order.placed"); n != 2 {
		t.Errorf("%d protobuf events in the log, want 2", n)
	}
	av := e.entries(t, "shop.refund.issued")
	if len(av) != 1 || av[0].Event.GetAttributes()[cloudevent.SchemaVersionAttribute].GetCeInteger() != 1 {
		t.Errorf("avro entries: %v", av)
	}
	bs := e.entries(t, "shop.blob.stored")
	if len(bs) != 2 || cloudevent.ContentType(bs[1].Event) != "application/octet-stream" {
		t.Errorf("bytes entries: %v", bs)
	}
}
