package schema

import (
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// inPlace returns the subschemas that apply to the same instance as s:
// references and the applicators that do not read deeper into the data.
// A cycle among them never ends, so the schema refuses every instance that
// reaches it (the validator reports a reference cycle).
func inPlace(s *jsonschema.Schema) []*jsonschema.Schema {
	out := []*jsonschema.Schema{s.Ref, s.RecursiveRef, s.Not, s.If, s.Then, s.Else}
	if s.DynamicRef != nil {
		out = append(out, s.DynamicRef.Ref)
	}
	out = append(out, s.AllOf...)
	out = append(out, s.AnyOf...)
	out = append(out, s.OneOf...)
	for _, d := range s.DependentSchemas {
		out = append(out, d)
	}
	for _, d := range s.Dependencies {
		if d, ok := d.(*jsonschema.Schema); ok {
			out = append(out, d)
		}
	}
	return out
}

// deeper returns the subschemas that apply to parts of the instance (or to
// its decoded content).
func deeper(s *jsonschema.Schema) []*jsonschema.Schema {
	out := []*jsonschema.Schema{s.PropertyNames, s.UnevaluatedProperties, s.Contains, s.Items2020, s.UnevaluatedItems, s.ContentSchema}
	for _, p := range s.Properties {
		out = append(out, p)
	}
	for _, p := range s.PatternProperties {
		out = append(out, p)
	}
	out = append(out, s.PrefixItems...)
	for _, v := range []any{s.AdditionalProperties, s.AdditionalItems, s.Items} {
		switch v := v.(type) {
		case *jsonschema.Schema:
			out = append(out, v)
		case []*jsonschema.Schema:
			out = append(out, v...)
		}
	}
	return out
}

// refCycle finds a cycle of in-place references, such as {"$ref":"#"}:
// it returns the location where the cycle closes and the one it returns
// to, as JSON pointers into the schema.
func refCycle(root *jsonschema.Schema) (from, to string, found bool) {
	const (
		unseen = iota
		onPath
		done
	)
	state := map[*jsonschema.Schema]int{}
	var visit func(s *jsonschema.Schema) bool
	visit = func(s *jsonschema.Schema) bool {
		state[s] = onPath
		for _, next := range inPlace(s) {
			if next == nil {
				continue
			}
			switch state[next] {
			case onPath:
				from, to = pointer(s.Location), pointer(next.Location)
				return true
			case unseen:
				if visit(next) {
					return true
				}
			}
		}
		state[s] = done
		return false
	}
	// Every subschema starts a search: a cycle below a property refuses
	// every event that has the property.
	seen := map[*jsonschema.Schema]bool{}
	queue := []*jsonschema.Schema{root}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		if s == nil || seen[s] {
			continue
		}
		seen[s] = true
		if state[s] == unseen && visit(s) {
			return from, to, true
		}
		queue = append(queue, inPlace(s)...)
		queue = append(queue, deeper(s)...)
	}
	return "", "", false
}

// pointer is the JSON pointer part of a schema location ("#" for the root).
func pointer(loc string) string {
	if _, frag, ok := strings.Cut(loc, "#"); ok {
		return "#" + frag
	}
	return "#"
}
