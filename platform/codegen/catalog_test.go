package codegen

import (
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Only JSON Schema types give typed clients a schema: an Avro schema is
// not a JSON Schema. Types that match no pattern are left out.
func TestFromCatalogSchemaOfFormats(t *testing.T) {
	all := []*registryv1.EventType{{Name: "a.b.json", Schema: `{"type":"object"}`}, {Name: "x.y.other", Schema: `{}`}}
	for _, f := range []registryv1.SchemaFormat{registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, registryv1.SchemaFormat_SCHEMA_FORMAT_NONE} {
		all = append(all, &registryv1.EventType{Name: "a.b.fmt" + string(rune('a'+int(f))), SchemaFormat: f, Schema: `{"type":"record","name":"R","fields":[]}`})
	}
	types := FromCatalog(all, []string{"a.*"})
	if len(types) != 4 {
		t.Fatalf("types: %+v", types)
	}
	if string(types[0].Schema) != `{"type":"object"}` {
		t.Errorf("JSON Schema type: %s", types[0].Schema)
	}
	for _, ty := range types[1:] {
		if ty.Schema != nil {
			t.Errorf("%s type: %s", ty.Name, ty.Schema)
		}
	}
}
