package schema

import (
	"strings"
	"testing"
)

// Schemas whose references come back to themselves without reading deeper
// into the data would refuse every event: they are refused when compiled.
// Recursion through a property or an item is fine.
func TestCompileRefusesSelfReferenceCycles(t *testing.T) {
	refused := map[string]string{
		"root":             `{"$ref":"#"}`,
		"through defs":     `{"$ref":"#/$defs/a","$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}}}`,
		"through allOf":    `{"allOf":[{"$ref":"#"}]}`,
		"through anyOf":    `{"anyOf":[{"type":"string"},{"$ref":"#"}]}`,
		"through not":      `{"not":{"$ref":"#"}}`,
		"under a property": `{"properties":{"a":{"$ref":"#/properties/a"}}}`,
		"through then":     `{"if":true,"then":{"$ref":"#"}}`,
	}
	for name, text := range refused {
		t.Run(name, func(t *testing.T) {
			_, err := Compile("t.x", text)
			if err == nil || !strings.Contains(err.Error(), "refers to itself") {
				t.Fatalf("Compile(%s) = %v, want a self-reference error", text, err)
			}
		})
	}
	fine := map[string]string{
		"tree":          `{"type":"object","properties":{"children":{"type":"array","items":{"$ref":"#"}}}}`,
		"linked list":   `{"$defs":{"node":{"type":"object","properties":{"next":{"$ref":"#/$defs/node"}}}},"$ref":"#/$defs/node"}`,
		"shared def":    `{"properties":{"a":{"$ref":"#/$defs/m"},"b":{"$ref":"#/$defs/m"}},"$defs":{"m":{"type":"integer"}}}`,
		"diamond allOf": `{"allOf":[{"$ref":"#/$defs/a"},{"$ref":"#/$defs/b"}],"$defs":{"a":{"$ref":"#/$defs/c"},"b":{"$ref":"#/$defs/c"},"c":{"type":"object"}}}`,
	}
	for name, text := range fine {
		t.Run(name, func(t *testing.T) {
			s, err := Compile("t.x", text)
			if err != nil {
				t.Fatalf("Compile(%s): %v", text, err)
			}
			if vs, err := s.Validate([]byte(`{}`)); err != nil || vs != nil {
				t.Fatalf("{} against %s: %v %v", text, vs, err)
			}
		})
	}
}
