package schema

import (
	"bytes"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// fastSchemas are schemas inside the fast path's subset, with the corners
// where it must defer to the library.
var fastSchemas = []string{
	benchOrderSchema,
	`{"type":"object","properties":{"n":{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":10}},"required":["n"]}`,
	`{"type":"object","properties":{"x":{"type":"number","minimum":-5}},"additionalProperties":{"type":"string","maxLength":3}}`,
	`{"type":["object","null"],"properties":{"tags":{"type":"array","items":{"type":"string","enum":["a","b","é"]},"minItems":1,"maxItems":3}}}`,
	`{"type":"object","minProperties":1,"maxProperties":2,"properties":{"ok":{"type":"boolean"},"v":true,"no":false}}`,
	`{"type":"array","items":{"type":"object","properties":{"id":{"type":"string","pattern":"^[a-z]+$","minLength":2}},"required":["id"],"additionalProperties":false}}`,
	`{"type":"number"}`,
	`{"type":"integer"}`,
	`true`,
	`{"type":"string","minLength":2,"maxLength":2}`,
	`{"enum":["x","y"]}`,
	`{"type":"object","properties":{"a":{"type":"object","properties":{"b":{"type":"integer","maximum":3}}}}}`,
}

// outside are schemas with keywords the fast path leaves to the library.
var outside = []string{
	`{"$ref":"#/$defs/a","$defs":{"a":{"type":"string"}}}`,
	`{"oneOf":[{"type":"string"},{"type":"integer"}]}`,
	`{"type":"integer","multipleOf":2}`,
	`{"type":"number","maximum":1.5}`,
	`{"const":3}`,
	`{"enum":[1,2]}`,
	`{"type":"array","uniqueItems":true}`,
	`{"patternProperties":{"^x":{"type":"string"}}}`,
	`{"if":{"type":"string"},"then":{"minLength":1}}`,
	`{"type":"array","prefixItems":[{"type":"string"}]}`,
	`{"dependentRequired":{"a":["b"]}}`,
	`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object"}`,
}

func library(t testing.TB, s *Schema, data []byte) bool {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return false
	}
	return s.s.Validate(inst) == nil
}

func TestFastPathSubset(t *testing.T) {
	for _, text := range fastSchemas {
		s, err := Compile("t", text)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		if s.fast == nil {
			t.Errorf("no fast path for %s", text)
		}
	}
	for _, text := range outside {
		s, err := Compile("t", text)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		if s.fast != nil {
			t.Errorf("a fast path for %s, which uses a keyword outside the subset", text)
		}
	}
}

// The fast path accepts ordinary conforming data itself, defers on the
// corners, and never accepts what the library refuses; Validate answers
// the library's violations for refused data.
func TestFastPathDecisions(t *testing.T) {
	cases := []struct {
		schema, data string
		fast, valid  bool
	}{
		{benchOrderSchema, string(benchOrder), true, true},
		{benchOrderSchema, `{"order_id":"ord_1","customer_id":"c","amount":-1,"currency":"EUR","quantity":3,"note":""}`, false, false},
		{benchOrderSchema, `{"order_id":"ord_1","customer_id":"c","amount":1,"currency":"EUR","quantity":3,"note":"","extra":1}`, false, false},
		{benchOrderSchema, `{"order_id":"ord_1","customer_id":"c","amount":1.0,"currency":"EUR","quantity":3,"note":""}`, false, true},
		{benchOrderSchema, `{"order_id":"ord_1","customer_id":"c","amount":1,"currency":"EUR","quantity":3}`, false, false},
		{benchOrderSchema, `{"order_id":"ord_1","order_id":"ord_2","customer_id":"c","amount":1,"currency":"EUR","quantity":3,"note":""}`, false, true},
		{benchOrderSchema, `{"order_id":"ord_1","customer_id":"c","amount":1,"currency":"EUR","quantity":3,"note":""} x`, false, false},
		{fastSchemas[1], `{"n":1}`, true, true},
		{fastSchemas[1], `{"n":0}`, false, false},
		{fastSchemas[1], `{"n":10}`, false, false},
		{fastSchemas[2], `{"x":-5,"y":"abc"}`, true, true},
		{fastSchemas[2], `{"x":-5.5}`, false, false},
		{fastSchemas[2], `{"x":2.5e3}`, false, true},
		{fastSchemas[2], `{"y":"abcd"}`, false, false},
		{fastSchemas[3], `null`, true, true},
		{fastSchemas[3], `{"tags":["é","a"]}`, true, true},
		{fastSchemas[3], `{"tags":[]}`, false, false},
		{fastSchemas[3], `{"tags":["c"]}`, false, false},
		{fastSchemas[4], `{"ok":true,"v":[1,{"a":null}]}`, true, true},
		{fastSchemas[4], `{"no":1}`, false, false},
		{fastSchemas[4], `{}`, false, false},
		{fastSchemas[6], `123456789012345678901234567890`, true, true},
		{fastSchemas[6], `1.5e-7`, true, true},
		{fastSchemas[7], `123456789012345678901234567890`, true, true},
		{fastSchemas[7], `2.0`, false, true},
		{fastSchemas[9], `"éé"`, true, true},
		{fastSchemas[9], `"é"`, false, false},
		{fastSchemas[11], `{"a":{"b":4}}`, false, false},
		{fastSchemas[11], `{"a":{"b":3,"c":"x"}}`, true, true},
	}
	for _, c := range cases {
		s, err := Compile("t", c.schema)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.fast != nil && s.fast.accepts([]byte(c.data)); got != c.fast {
			t.Errorf("fast path on %s under %s: %v, want %v", c.data, c.schema, got, c.fast)
		}
		if got := library(t, s, []byte(c.data)); got != c.valid {
			t.Errorf("library on %s under %s: %v, want %v", c.data, c.schema, got, c.valid)
		}
		vs, err := s.Validate([]byte(c.data))
		if got := err == nil && len(vs) == 0; got != c.valid {
			t.Errorf("Validate on %s: %v %v, want valid=%v", c.data, vs, err, c.valid)
		}
	}
}

// FuzzFastPathNeverAcceptsWhatTheLibraryRefuses: soundness of the fast
// path against the library, on every schema of the subset.
func FuzzFastPathNeverAcceptsWhatTheLibraryRefuses(f *testing.F) {
	for _, seed := range []string{string(benchOrder), `{"n":1}`, `{"x":-5,"y":"abc"}`, `{"tags":["é","a"]}`, `null`, `[{"id":"ab"}]`,
		`{"ok":true,"v":[1]}`, `1e400`, `-0`, `"\u00e9\u00e9"`, `{"a":{"b":3}}`, `{"order_id":"ord_1"}`, `[]`, `{"y":"\ud800"}`} {
		f.Add([]byte(seed))
	}
	schemas := make([]*Schema, len(fastSchemas))
	for i, text := range fastSchemas {
		s, err := Compile("t", text)
		if err != nil {
			f.Fatal(err)
		}
		schemas[i] = s
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for i, s := range schemas {
			if s.fast.accepts(data) && !library(t, s, data) {
				t.Fatalf("the fast path accepts %q under schema %d (%s), which the library refuses", data, i, fastSchemas[i])
			}
		}
	})
}
