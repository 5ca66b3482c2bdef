package catalogfile

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

const formatsFile = `version: 1
eventTypes:
  - name: shop.order.placed
    format: protobuf
    protobuf:
      message: shop.v1.OrderPlaced
      files:
        shop/v1/order.proto: |
          syntax = "proto3";
          package shop.v1;
          message OrderPlaced { string order_id = 1; int64 total = 2; }
  - name: shop.refund.issued
    format: avro
    schema: {"type": "record", "name": "Refund", "fields": [{"name": "id", "type": "string"}]}
  - name: shop.scan.stored
    format: none
    contentType: application/octet-stream
`

// TestFormatsAgainstRealRegistry: Protobuf, Avro and NONE types through
// apply, export and a breaking protobuf change.
func TestFormatsAgainstRealRegistry(t *testing.T) {
	s := session{t: t, client: startRegistry(t)}
	ctx := context.Background()
	p := s.plan(formatsFile)
	var out bytes.Buffer
	if err := Apply(ctx, s.client, p, &out); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	res, err := s.client.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "shop.order.placed"}))
	if err != nil || res.Msg.GetEventType().GetSchemaFormat() != registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF {
		t.Fatalf("protobuf type: %v %v", res, err)
	}
	if p := s.plan(formatsFile); !p.Empty() {
		t.Fatalf("second plan not empty:\n%s", text(p))
	}
	exported := s.export()
	if p := s.plan(string(exported)); !p.Empty() {
		t.Fatalf("plan of the export not empty:\n%s\n%s", text(p), exported)
	}
	for _, want := range []string{"format: protobuf", "message: shop.v1.OrderPlaced", "format: avro", "contentType: application/octet-stream"} {
		if !strings.Contains(string(exported), want) {
			t.Errorf("export lacks %q:\n%s", want, exported)
		}
	}
	// Dropping a protobuf field without reserving it is refused with the
	// registry's reason; reserving it is a compatible new version.
	p = s.plan(strings.Replace(formatsFile, " int64 total = 2; ", " ", 1))
	bad := p.Incompatible()
	if len(bad) != 1 || !strings.Contains(strings.Join(bad[0].Verdict.Reasons, " "), "/total: field 2 (total) was removed without reserving its number") {
		t.Fatalf("incompatible plan:\n%s", text(p))
	}
	var ie *IncompatibleError
	if err := Apply(ctx, s.client, p, &out); !errors.As(err, &ie) {
		t.Fatalf("apply of a breaking change: %v", err)
	}
	p = s.plan(strings.Replace(formatsFile, " int64 total = 2; ", " reserved 2; ", 1))
	if len(p.Changes) != 1 || p.Changes[0].Kind != AddSchemaVersion || len(p.Incompatible()) != 0 {
		t.Fatalf("compatible plan:\n%s", text(p))
	}
	if err := Apply(ctx, s.client, p, &out); err != nil {
		t.Fatal(err)
	}
	// The format is fixed.
	st, err := Fetch(ctx, s.client)
	if err != nil {
		t.Fatal(err)
	}
	p = NewPlan(st, parse(t, strings.Replace(formatsFile, "format: none\n    contentType: application/octet-stream", "schema: {}", 1)))
	if !strings.Contains(text(p), "(the registry refuses: a type keeps its format)") {
		t.Errorf("format change:\n%s", text(p))
	}
	if _, err := Parse("c.yaml", strings.NewReader(strings.Replace(formatsFile, "format: avro", "format: thrift", 1))); err == nil || !strings.Contains(err.Error(), `format "thrift"`) {
		t.Errorf("unknown format: %v", err)
	}
}
