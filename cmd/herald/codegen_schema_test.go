package main

import (
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Only JSON Schema types give typed clients a schema: an Avro schema is
// not a JSON Schema.
func TestCodegenSchemaOfFormats(t *testing.T) {
	if got := codegenSchema(&registryv1.EventType{Schema: `{"type":"object"}`}); string(got) != `{"type":"object"}` {
		t.Errorf("JSON Schema type: %s", got)
	}
	for _, f := range []registryv1.SchemaFormat{registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, registryv1.SchemaFormat_SCHEMA_FORMAT_NONE} {
		if got := codegenSchema(&registryv1.EventType{SchemaFormat: f, Schema: `{"type":"record","name":"R","fields":[]}`}); got != nil {
			t.Errorf("%v type: %s", f, got)
		}
	}
}
