// Package schema compiles the JSON Schemas (draft 2020-12) of event types
// and validates event data against them. References may point inside the
// schema only: nothing is ever fetched from the network or the disk.
package schema

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// MaxSize bounds a schema's JSON text.
const MaxSize = 256 << 10

// Schema is a compiled schema, safe for concurrent use.
type Schema struct {
	s    *jsonschema.Schema
	fast *fastNode // nil: the schema has no fast path (see fast.go)
}

// Violation is one rule the data broke.
type Violation struct {
	InstanceLocation string // JSON pointer into the data, e.g. /amount
	KeywordLocation  string // JSON pointer into the schema, e.g. /properties/amount/minimum
	Message          string
}

func (v Violation) String() string {
	loc := v.InstanceLocation
	if loc == "" {
		loc = "/"
	}
	return fmt.Sprintf("%s: %s (rule %s)", loc, v.Message, v.KeywordLocation)
}

// refuseLoader keeps the compiler from loading any external resource.
type refuseLoader struct{}

func (refuseLoader) Load(u string) (any, error) {
	return nil, fmt.Errorf("external $ref %q is not allowed: references must point inside the schema", u)
}

// Compile parses and compiles a schema. name only labels errors.
func Compile(name, text string) (*Schema, error) {
	if len(text) > MaxSize {
		return nil, fmt.Errorf("schema is %d bytes, more than the %d allowed", len(text), MaxSize)
	}
	if strings.TrimSpace(text) == "" {
		return nil, errors.New("schema is empty")
	}
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("schema is not valid JSON: %v", err)
	}
	switch doc.(type) {
	case map[string]any, bool:
	default:
		return nil, errors.New("schema must be a JSON object (or true/false)")
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(refuseLoader{})
	loc := "https://schemas.herald.invalid/" + url.PathEscape(name) + ".json"
	if err := c.AddResource(loc, doc); err != nil {
		return nil, fmt.Errorf("schema: %v", err)
	}
	s, err := c.Compile(loc)
	if err != nil {
		return nil, fmt.Errorf("schema does not compile: %s", cleanError(err))
	}
	// A reference that comes back to itself without reading deeper into
	// the data ({"$ref":"#"}) compiles, then refuses every event.
	if from, to, ok := refCycle(s); ok {
		return nil, fmt.Errorf("schema refers to itself without reading deeper into the data: %s leads back to %s, so no event could ever conform", from, to)
	}
	return &Schema{s: s, fast: compileFast(s, 0)}, nil
}

// Parsed returns the compiled schema as the validator's library
// (github.com/santhosh-tekuri/jsonschema/v6) holds it, references resolved,
// for tools that read a schema's structure (platform/codegen). It is shared:
// callers must not change it.
func (s *Schema) Parsed() *jsonschema.Schema { return s.s }

func cleanError(err error) string {
	msg := err.Error()
	return strings.ReplaceAll(msg, "\n", "; ")
}

// Validate checks JSON data. It returns nil when the data conforms, or the
// violated rules (the innermost ones, where the cause is).
func (s *Schema) Validate(data []byte) ([]Violation, error) {
	if s.fast != nil && s.fast.accepts(data) {
		return nil, nil
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("data is not valid JSON: %v", err)
	}
	err = s.s.Validate(inst)
	if err == nil {
		return nil, nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return nil, err
	}
	out := ve.BasicOutput()
	var vs []Violation
	for _, u := range out.Errors {
		if u.Error == nil {
			continue
		}
		vs = append(vs, Violation{InstanceLocation: u.InstanceLocation, KeywordLocation: u.KeywordLocation, Message: u.Error.String()})
	}
	if len(vs) == 0 {
		vs = append(vs, Violation{InstanceLocation: out.InstanceLocation, KeywordLocation: out.KeywordLocation, Message: cleanError(err)})
	}
	return vs, nil
}
