package schema

import (
	"encoding/json"
	"math/rand"
	"strings"
	"testing"
)

// TestRandomEvolutionsAreSound checks the promise of CheckCompatibility on
// random schemas and their random mutations: when BACKWARD finds no
// reason, every instance the old schema accepts is accepted by the new
// one (checked with the validator on a sample of instances). It also
// checks that schemas without self-references are compatible with
// themselves in most cases.
func TestRandomEvolutionsAreSound(t *testing.T) {
	g := randGen{rand.New(rand.NewSource(20261125))}
	var instances [][]byte
	for range 200 {
		b, _ := json.Marshal(g.value(0))
		instances = append(instances, b)
	}
	iterations := 500
	if testing.Short() {
		iterations = 150
	}
	compatible, checked := 0, 0
	for range iterations {
		old := g.root()
		var cand any
		if g.r.Intn(4) == 0 {
			cand = g.root()
		} else {
			cand = g.mutate(old)
		}
		ob, _ := json.Marshal(old)
		cb, _ := json.Marshal(cand)
		reasons, err := CheckCompatibility(backward, string(cb), []string{string(ob)})
		if err != nil || len(reasons) > 0 {
			continue
		}
		compatible++
		oldS, err1 := Compile("old", string(ob))
		newS, err2 := Compile("new", string(cb))
		if err1 != nil || err2 != nil {
			t.Fatalf("compiled for the check but not now: %v %v", err1, err2)
		}
		for _, in := range instances {
			if vs, err := oldS.Validate(in); err != nil || len(vs) > 0 {
				continue
			}
			checked++
			if vs, _ := newS.Validate(in); len(vs) > 0 {
				t.Fatalf("reported compatible, but the new schema rejects %s accepted by the old one: %v\nold: %s\nnew: %s", in, vs, ob, cb)
			}
		}
	}
	if compatible < iterations/5 || checked < iterations*10 {
		t.Fatalf("too few meaningful checks: %d compatible evolutions, %d instances", compatible, checked)
	}

	// Self-compatibility (a measure of precision), for schemas whose refs
	// cannot loop.
	self, bad := 0, 0
	for range iterations / 3 {
		s := g.root()
		b, _ := json.Marshal(s)
		defs, _ := json.Marshal(s.(map[string]any)["$defs"])
		if strings.Contains(string(b), `"#"`) || strings.Contains(string(defs), "$ref") {
			continue
		}
		reasons, err := CheckCompatibility(full, string(b), []string{string(b)})
		if err != nil {
			continue
		}
		self++
		if len(reasons) > 0 {
			bad++
		}
	}
	t.Logf("%d compatible evolutions, %d instances checked; %d of %d schemas not self-compatible", compatible, checked, bad, self)
	if bad*10 > self {
		t.Fatalf("%d of %d schemas are not compatible with themselves", bad, self)
	}
}

// randGen makes random schemas and instances for TestRandomEvolutionsAreSound.
type randGen struct{ r *rand.Rand }

func (g randGen) pick(xs ...any) any { return xs[g.r.Intn(len(xs))] }

func (g randGen) value(d int) any {
	switch g.r.Intn(8) {
	case 0:
		return nil
	case 1:
		return g.r.Intn(2) == 0
	case 2:
		return g.pick(0, 1, 2, -1, 5, 100)
	case 3:
		return g.pick(1.5, 0.25, -2.5)
	case 4:
		return g.pick("", "a", "abc", "x-1", "b")
	case 5:
		if d > 2 {
			return 1
		}
		n := g.r.Intn(3)
		a := []any{}
		for i := 0; i < n; i++ {
			a = append(a, g.value(d+1))
		}
		return a
	default:
		if d > 2 {
			return "a"
		}
		m := map[string]any{}
		for _, k := range []string{"a", "b", "c", "x-y"} {
			if g.r.Intn(2) == 0 {
				m[k] = g.value(d + 1)
			}
		}
		return m
	}
}

func (g randGen) schema(d int) any {
	if d > 3 {
		return g.pick(true, map[string]any{"type": "integer"}, map[string]any{"type": "string"}, map[string]any{})
	}
	switch g.r.Intn(16) {
	case 0:
		return g.pick(true, false, map[string]any{})
	case 1:
		return map[string]any{"type": g.pick("null", "boolean", "integer", "number", "string", "array", "object")}
	case 2:
		return map[string]any{"type": []any{g.pick("integer", "number"), g.pick("string", "null")}}
	case 3:
		n := 1 + g.r.Intn(3)
		e := []any{}
		for i := 0; i < n; i++ {
			e = append(e, g.value(2))
		}
		return map[string]any{"enum": e}
	case 4:
		return map[string]any{"const": g.value(2)}
	case 5:
		m := map[string]any{"type": g.pick("integer", "number")}
		for _, k := range []string{"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"} {
			if g.r.Intn(3) == 0 {
				if k == "multipleOf" {
					m[k] = g.pick(1, 2, 0.5)
				} else {
					m[k] = g.pick(0, 1, 2, 1.5, -1, 5)
				}
			}
		}
		return m
	case 6:
		m := map[string]any{"type": "string"}
		if g.r.Intn(2) == 0 {
			m["minLength"] = g.pick(0, 1, 2)
		}
		if g.r.Intn(2) == 0 {
			m["maxLength"] = g.pick(1, 2, 3)
		}
		if g.r.Intn(3) == 0 {
			m["pattern"] = g.pick("^x", "a", "^[a-c]*$")
		}
		return m
	case 7, 8:
		m := map[string]any{}
		if g.r.Intn(3) > 0 {
			m["type"] = "object"
		}
		props := map[string]any{}
		req := []any{}
		for _, k := range []string{"a", "b", "c"} {
			if g.r.Intn(2) == 0 {
				props[k] = g.schema(d + 1)
			}
			if g.r.Intn(4) == 0 {
				req = append(req, k)
			}
		}
		m["properties"] = props
		if len(req) > 0 {
			m["required"] = req
		}
		switch g.r.Intn(4) {
		case 0:
			m["additionalProperties"] = false
		case 1:
			m["additionalProperties"] = g.schema(d + 1)
		}
		if g.r.Intn(5) == 0 {
			m["patternProperties"] = map[string]any{"^x-": g.schema(d + 1)}
		}
		if g.r.Intn(6) == 0 {
			m["minProperties"] = g.pick(1, 2)
		}
		if g.r.Intn(8) == 0 {
			m["propertyNames"] = map[string]any{"maxLength": 1}
		}
		if g.r.Intn(8) == 0 {
			m["dependentRequired"] = map[string]any{"a": []any{"b"}}
		}
		if g.r.Intn(8) == 0 {
			m["unevaluatedProperties"] = false
		}
		return m
	case 9:
		m := map[string]any{"type": "array"}
		if g.r.Intn(2) == 0 {
			m["items"] = g.schema(d + 1)
		}
		if g.r.Intn(3) == 0 {
			m["prefixItems"] = []any{g.schema(d + 1)}
		}
		if g.r.Intn(3) == 0 {
			m["minItems"] = g.pick(0, 1, 2)
		}
		if g.r.Intn(3) == 0 {
			m["maxItems"] = g.pick(0, 1, 2)
		}
		if g.r.Intn(4) == 0 {
			m["uniqueItems"] = true
		}
		if g.r.Intn(5) == 0 {
			m["contains"] = g.schema(d + 1)
		}
		return m
	case 10:
		return map[string]any{g.pick("anyOf", "oneOf", "allOf").(string): []any{g.schema(d + 1), g.schema(d + 1)}}
	case 11:
		return map[string]any{"not": g.schema(d + 1)}
	case 12:
		return map[string]any{"if": g.schema(d + 1), "then": g.schema(d + 1), "else": g.schema(d + 1)}
	case 13:
		return map[string]any{"$ref": g.pick("#/$defs/d", "#/$defs/e", "#")}
	case 14:
		m := g.schema(d + 1)
		if mm, ok := m.(map[string]any); ok {
			mm["$ref"] = "#/$defs/d"
		}
		return m
	default:
		m := g.schema(d + 1)
		if mm, ok := m.(map[string]any); ok {
			mm["anyOf"] = []any{g.schema(d + 1), g.schema(d + 1)}
		}
		return m
	}
}

func (g randGen) root() any {
	s := g.schema(0)
	m, ok := s.(map[string]any)
	if !ok {
		m = map[string]any{"allOf": []any{s}}
	}
	m["$defs"] = map[string]any{"d": g.schema(2), "e": g.schema(2)}
	return m
}

// mutate changes a random subschema of a deep copy.
func (g randGen) mutate(s any) any {
	b, _ := json.Marshal(s)
	var c any
	json.Unmarshal(b, &c)
	var nodes []map[string]any
	var walk func(x any)
	walk = func(x any) {
		switch v := x.(type) {
		case map[string]any:
			nodes = append(nodes, v)
			for _, y := range v {
				walk(y)
			}
		case []any:
			for _, y := range v {
				walk(y)
			}
		}
	}
	walk(c)
	for i := 0; i < 1+g.r.Intn(2); i++ {
		n := nodes[g.r.Intn(len(nodes))]
		keys := []string{}
		for k := range n {
			keys = append(keys, k)
		}
		switch g.r.Intn(4) {
		case 0:
			if len(keys) > 0 {
				k := keys[g.r.Intn(len(keys))]
				if k != "$defs" {
					delete(n, k)
				}
			}
		case 1:
			if len(keys) > 0 {
				k := keys[g.r.Intn(len(keys))]
				if f, ok := n[k].(float64); ok {
					n[k] = f + float64(g.r.Intn(3)-1)
					if k == "multipleOf" && n[k].(float64) <= 0 {
						n[k] = 1.0
					}
					if (k == "minLength" || k == "maxLength" || k == "minItems" || k == "maxItems" || k == "minProperties") && n[k].(float64) < 0 {
						n[k] = 0.0
					}
				}
			}
		case 2:
			sm, _ := g.schema(2).(map[string]any)
			for k, v := range sm {
				if k != "$defs" {
					n[k] = v
				}
			}
		case 3:
			if p, ok := n["properties"].(map[string]any); ok {
				p[g.pick("a", "b", "c", "d").(string)] = g.schema(3)
			} else if t, ok := n["type"]; ok && t == "integer" {
				n["type"] = "number"
			}
		}
	}
	return c
}
