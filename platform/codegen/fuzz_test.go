package codegen

import (
	"os"
	"strings"
	"testing"
)

// Any schema the registry would accept gives code or an error, never a
// panic or a hang; the Go written always parses (Generate formats it and
// reports a failure as a bug).
func FuzzGenerate(f *testing.F) {
	for _, s := range MappingSchemas() {
		f.Add(s)
	}
	if b, err := os.ReadFile("testdata/invoice_paid.json"); err == nil {
		f.Add(string(b))
	}
	f.Add(`{"$defs":{"a":{"type":"array","items":{"$ref":"#/$defs/a"}}},"$ref":"#/$defs/a"}`)
	f.Add(`{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"type":"object","properties":{"x":{"$ref":"#/$defs/a"}}}},"$ref":"#/$defs/a"}`)
	f.Add(`{"type":"object","properties":{"a":{"$id":"inner.json","type":"object","properties":{"b":{"$ref":"#"}}}}}`)
	f.Fuzz(func(t *testing.T, schema string) {
		types := []Type{{Name: "fuzz.case.done", Schema: []byte(schema), SchemaVersion: 1}}
		for _, lang := range Languages {
			_, err := Generate(lang, Options{}, types)
			if err != nil && strings.Contains(err.Error(), "a bug") {
				t.Fatalf("%s: %v\nschema: %s", lang, err, schema)
			}
		}
	})
}
