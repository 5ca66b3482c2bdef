package schema

import (
	"reflect"
	"strings"
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

const (
	none          = registryv1.Compatibility_COMPATIBILITY_NONE
	unspecified   = registryv1.Compatibility_COMPATIBILITY_UNSPECIFIED
	backward      = registryv1.Compatibility_COMPATIBILITY_BACKWARD
	backwardTrans = registryv1.Compatibility_COMPATIBILITY_BACKWARD_TRANSITIVE
	forward       = registryv1.Compatibility_COMPATIBILITY_FORWARD
	forwardTrans  = registryv1.Compatibility_COMPATIBILITY_FORWARD_TRANSITIVE
	full          = registryv1.Compatibility_COMPATIBILITY_FULL
	fullTrans     = registryv1.Compatibility_COMPATIBILITY_FULL_TRANSITIVE
)

var allModes = []registryv1.Compatibility{unspecified, none, backward, backwardTrans, forward, forwardTrans, full, fullTrans}

// Schemas of an evolving payment event.
const (
	// open content model: any extra property is allowed
	payOpen = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":"integer"}},"required":["id","amount"]}`
	// the same, closed
	payClosed = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":"integer"}},"required":["id","amount"],"additionalProperties":false}`
	// open, with an optional typed property
	payOpenNote = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":"integer"},"note":{"type":"string"}},"required":["id","amount"]}`
	// open, with an optional property that accepts anything
	payOpenAnyNote = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":"integer"},"note":{"description":"free text"}},"required":["id","amount"]}`
	// closed, with an optional typed property
	payClosedNote = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":"integer"},"note":{"type":"string"}},"required":["id","amount"],"additionalProperties":false}`
	// open, with a new required property
	payOpenCurrency = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":"integer"},"currency":{"type":"string"}},"required":["id","amount","currency"]}`
	// open, amount no longer required
	payOpenAmountOptional = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":"integer"}},"required":["id"]}`
	// amount widened to number
	payNumber = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":"number"}},"required":["id","amount"]}`
	// amount as ["integer","number"]
	payIntOrNumber = `{"type":"object","properties":{"id":{"type":"string"},"amount":{"type":["integer","number"]}},"required":["id","amount"]}`
	// amount with a description only (annotation change)
	payOpenDescribed = `{"title":"payment","type":"object","properties":{"id":{"type":"string","description":"payment id"},"amount":{"type":"integer","examples":[5]}},"required":["id","amount"]}`
)

func payWith(amount string) string {
	return `{"type":"object","properties":{"id":{"type":"string"},"amount":` + amount + `},"required":["id","amount"]}`
}

func withCurrency(enum string) string {
	return `{"type":"object","properties":{"currency":{"enum":` + enum + `}},"required":["currency"]}`
}

func TestCheckCompatibility(t *testing.T) {
	cases := []struct {
		name      string
		mode      registryv1.Compatibility
		versions  []string
		candidate string
		// want: each must be a substring of some reason; none: compatible
		want []string
		// exact: when set, the reasons must be exactly these
		exact []string
	}{
		// ---- NONE ----
		{name: "none allows anything", mode: none, versions: []string{payClosed}, candidate: `{"type":"string"}`},
		{name: "none allows removing everything", mode: none, versions: []string{payOpen, payNumber}, candidate: `false`},

		// ---- BACKWARD (and UNSPECIFIED) ----
		{name: "backward: optional property added to a closed model", mode: backward, versions: []string{payClosed}, candidate: payClosedNote},
		{name: "backward: optional accept-all property added to an open model", mode: backward, versions: []string{payOpen}, candidate: payOpenAnyNote},
		{
			name: "backward: optional typed property added to an open model", mode: backward, versions: []string{payOpen}, candidate: payOpenNote,
			exact: []string{"BACKWARD: /properties/note: property added to an open content model: data written with version 1 may not be readable"},
		},
		{
			name: "backward: required property added", mode: backward, versions: []string{payOpen}, candidate: payOpenCurrency,
			exact: []string{
				"BACKWARD: /properties/currency: property added to an open content model: data written with version 1 may not be readable",
				"BACKWARD: /properties/currency: required property added: data written with version 1 may not be readable",
			},
		},
		{
			name: "backward: existing property became required", mode: backward, versions: []string{payOpenAmountOptional}, candidate: payOpen,
			exact: []string{"BACKWARD: /properties/amount: property became required: data written with version 1 may not be readable"},
		},
		{name: "backward: required property made optional", mode: backward, versions: []string{payOpen}, candidate: payOpenAmountOptional},
		{name: "backward: required property removed from an open model", mode: backward, versions: []string{payOpen},
			candidate: `{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}`},
		{
			name: "backward: open model closed", mode: backward, versions: []string{payOpen}, candidate: payClosed,
			exact: []string{"BACKWARD: /additionalProperties: content model closed: additional properties are no longer allowed: data written with version 1 may not be readable"},
		},
		{
			name: "backward: property removed from a closed model", mode: backward, versions: []string{payClosedNote}, candidate: payClosed,
			exact: []string{"BACKWARD: /properties/note: property removed from a closed content model: data written with version 1 may not be readable"},
		},
		{name: "backward: closed model opened", mode: backward, versions: []string{payClosed}, candidate: payOpen},
		{name: "backward: integer widened to number", mode: backward, versions: []string{payOpen}, candidate: payNumber},
		{
			name: "backward: type narrowed against the latest version", mode: backward, versions: []string{payOpen, payIntOrNumber}, candidate: payOpen,
			exact: []string{`BACKWARD: /properties/amount: type narrowed from ["integer","number"] to ["integer"]: data written with version 2 may not be readable`},
		},
		{
			name: "unspecified behaves as backward", mode: unspecified, versions: []string{payNumber}, candidate: payOpen,
			exact: []string{`BACKWARD: /properties/amount: type narrowed from ["number"] to ["integer"]: data written with version 1 may not be readable`},
		},
		{name: "backward: enum value added", mode: backward, versions: []string{withCurrency(`["EUR","USD"]`)}, candidate: withCurrency(`["EUR","USD","GBP"]`)},
		{
			name: "backward: enum value removed", mode: backward, versions: []string{withCurrency(`["EUR","USD"]`)}, candidate: withCurrency(`["USD"]`),
			exact: []string{`BACKWARD: /properties/currency: enum value removed: ["EUR"]: data written with version 1 may not be readable`},
		},
		{
			name: "backward: maximum lowered", mode: backward, versions: []string{payWith(`{"type":"integer","maximum":1000}`)}, candidate: payWith(`{"type":"integer","maximum":100}`),
			exact: []string{"BACKWARD: /properties/amount: maximum lowered from 1000 to 100: data written with version 1 may not be readable"},
		},
		{name: "backward: maximum raised", mode: backward, versions: []string{payWith(`{"type":"integer","maximum":100}`)}, candidate: payWith(`{"type":"integer","maximum":1000}`)},
		{
			name: "backward: nested object change", mode: backward,
			versions:  []string{`{"type":"object","properties":{"customer":{"type":"object","properties":{"email":{"type":"string"}},"additionalProperties":false}}}`},
			candidate: `{"type":"object","properties":{"customer":{"type":"object","properties":{"email":{"type":"string","format":"email"},"name":{"type":"string"}},"required":["name"],"additionalProperties":false}}}`,
			exact: []string{
				`BACKWARD: /properties/customer/properties/email: format "email" added: data written with version 1 may not be readable`,
				"BACKWARD: /properties/customer/properties/name: required property added: data written with version 1 may not be readable",
			},
		},
		{
			name: "backward: array items change", mode: backward,
			versions:  []string{`{"type":"object","properties":{"lines":{"type":"array","items":{"type":"object","properties":{"qty":{"type":"number"}}}}}}`},
			candidate: `{"type":"object","properties":{"lines":{"type":"array","minItems":1,"items":{"type":"object","properties":{"qty":{"type":"integer","minimum":1}}}}}}`,
			exact: []string{
				"BACKWARD: /properties/lines: minItems 1 added: data written with version 1 may not be readable",
				"BACKWARD: /properties/lines/items/properties/qty: minimum 1 added: data written with version 1 may not be readable",
				`BACKWARD: /properties/lines/items/properties/qty: type narrowed from ["number"] to ["integer"]: data written with version 1 may not be readable`,
			},
		},
		{
			name: "backward: local $ref into $defs", mode: backward,
			versions:  []string{`{"type":"object","properties":{"amount":{"$ref":"#/$defs/money"}},"$defs":{"money":{"type":"integer","minimum":0}}}`},
			candidate: `{"type":"object","properties":{"amount":{"$ref":"#/$defs/money"}},"$defs":{"money":{"type":"integer","minimum":1}}}`,
			exact:     []string{"BACKWARD: /properties/amount: minimum raised from 0 to 1: data written with version 1 may not be readable"},
		},

		// ---- BACKWARD_TRANSITIVE ----
		{name: "backward transitive: widening chain", mode: backwardTrans, versions: []string{payOpen, payIntOrNumber}, candidate: payNumber},
		// v2 narrowed v1 (registered while the mode was FORWARD); the
		// candidate reads v2's data but not v1's.
		{name: "backward (not transitive) ignores older versions", mode: backward, versions: []string{payNumber, payOpen}, candidate: payOpenDescribed},
		{
			name: "backward transitive: breaks against the first version only", mode: backwardTrans, versions: []string{payNumber, payOpen}, candidate: payOpenDescribed,
			exact: []string{`BACKWARD_TRANSITIVE: /properties/amount: type narrowed from ["number"] to ["integer"]: data written with version 1 may not be readable`},
		},

		// ---- FORWARD ----
		{name: "forward: required property added", mode: forward, versions: []string{payOpen}, candidate: payOpenCurrency},
		{name: "forward: optional typed property added to an open model", mode: forward, versions: []string{payOpen}, candidate: payOpenNote},
		{
			name: "forward: optional property added to a closed model", mode: forward, versions: []string{payClosed}, candidate: payClosedNote,
			exact: []string{"FORWARD: /properties/note: property added to a closed content model: data written with the new schema may not be readable by version 1"},
		},
		{
			name: "forward: required property made optional", mode: forward, versions: []string{payOpen}, candidate: payOpenAmountOptional,
			exact: []string{"FORWARD: /properties/amount: property is no longer required: data written with the new schema may not be readable by version 1"},
		},
		{
			name: "forward: required property removed", mode: forward, versions: []string{payOpen},
			candidate: `{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}`,
			exact: []string{
				"FORWARD: /properties/amount: property removed from an open content model: data written with the new schema may not be readable by version 1",
				"FORWARD: /properties/amount: required property removed: data written with the new schema may not be readable by version 1",
			},
		},
		{name: "forward: open model closed", mode: forward, versions: []string{payOpen}, candidate: payClosed},
		{
			name: "forward: closed model opened", mode: forward, versions: []string{payClosed}, candidate: payOpen,
			exact: []string{"FORWARD: /additionalProperties: content model opened: additional properties are now allowed: data written with the new schema may not be readable by version 1"},
		},
		{
			name: "forward: integer widened to number", mode: forward, versions: []string{payOpen}, candidate: payNumber,
			exact: []string{`FORWARD: /properties/amount: type widened from ["integer"] to ["number"]: data written with the new schema may not be readable by version 1`},
		},
		{name: "forward: number narrowed to integer", mode: forward, versions: []string{payNumber}, candidate: payOpen},
		{
			name: "forward: enum value added", mode: forward, versions: []string{withCurrency(`["EUR","USD"]`)}, candidate: withCurrency(`["EUR","USD","GBP"]`),
			exact: []string{`FORWARD: /properties/currency: enum value added: ["GBP"]: data written with the new schema may not be readable by version 1`},
		},
		{name: "forward: enum value removed", mode: forward, versions: []string{withCurrency(`["EUR","USD"]`)}, candidate: withCurrency(`["USD"]`)},
		{name: "forward: maximum lowered", mode: forward, versions: []string{payWith(`{"type":"integer","maximum":1000}`)}, candidate: payWith(`{"type":"integer","maximum":100}`)},
		{
			name: "forward: maximum raised", mode: forward, versions: []string{payWith(`{"type":"integer","maximum":100}`)}, candidate: payWith(`{"type":"integer","maximum":1000}`),
			exact: []string{"FORWARD: /properties/amount: maximum raised from 100 to 1000: data written with the new schema may not be readable by version 1"},
		},
		{
			name: "forward: array items widened", mode: forward,
			versions:  []string{`{"type":"object","properties":{"tags":{"type":"array","items":{"type":"string","maxLength":10}}}}`},
			candidate: `{"type":"object","properties":{"tags":{"type":"array","items":{"type":["string","null"]}}}}`,
			exact: []string{
				"FORWARD: /properties/tags/items: maxLength 10 removed: data written with the new schema may not be readable by version 1",
				`FORWARD: /properties/tags/items: type widened from ["string"] to ["string","null"]: data written with the new schema may not be readable by version 1`,
			},
		},

		// ---- FORWARD_TRANSITIVE ----
		{name: "forward transitive: narrowing chain", mode: forwardTrans, versions: []string{payNumber, payIntOrNumber}, candidate: payOpen},
		// v2 widened v1 (registered while the mode was BACKWARD).
		{name: "forward (not transitive) ignores older versions", mode: forward, versions: []string{payOpen, payNumber}, candidate: payNumber},
		{
			name: "forward transitive: breaks against the first version only", mode: forwardTrans, versions: []string{payOpen, payNumber}, candidate: payNumber,
			exact: []string{`FORWARD_TRANSITIVE: /properties/amount: type widened from ["integer"] to ["number"]: data written with the new schema may not be readable by version 1`},
		},

		// ---- FULL ----
		{name: "full: annotations only", mode: full, versions: []string{payOpen}, candidate: payOpenDescribed},
		{name: "full: optional accept-all property added to an open model", mode: full, versions: []string{payOpen}, candidate: payOpenAnyNote},
		{
			name: "full: inline schema moved into $defs", mode: full,
			versions:  []string{`{"type":"object","properties":{"amount":{"type":"integer","minimum":0}}}`},
			candidate: `{"type":"object","properties":{"amount":{"$ref":"#/$defs/money"}},"$defs":{"money":{"type":"integer","minimum":0}}}`,
		},
		{
			name: "full: widening breaks forward", mode: full, versions: []string{payOpen}, candidate: payNumber,
			exact: []string{`FULL: /properties/amount: type widened from ["integer"] to ["number"]: data written with the new schema may not be readable by version 1`},
		},
		{
			name: "full: both directions", mode: full, versions: []string{withCurrency(`["EUR","USD"]`)}, candidate: withCurrency(`["USD","GBP"]`),
			exact: []string{
				`FULL: /properties/currency: enum value removed: ["EUR"]: data written with version 1 may not be readable`,
				`FULL: /properties/currency: enum value added: ["GBP"]: data written with the new schema may not be readable by version 1`,
			},
		},

		// ---- FULL_TRANSITIVE ----
		{name: "full transitive: annotation-only history", mode: fullTrans, versions: []string{payOpen, payOpenDescribed}, candidate: payOpen},
		// v2 widened v1 (registered while the mode was BACKWARD); the
		// candidate equals v2.
		{name: "full (not transitive) ignores older versions", mode: full, versions: []string{payOpen, payNumber}, candidate: payNumber},
		{
			name: "full transitive: breaks against the first version only", mode: fullTrans, versions: []string{payOpen, payNumber}, candidate: payNumber,
			exact: []string{`FULL_TRANSITIVE: /properties/amount: type widened from ["integer"] to ["number"]: data written with the new schema may not be readable by version 1`},
		},
		{
			name: "full transitive: reasons for each version", mode: fullTrans, versions: []string{payOpen, payWith(`{"type":["integer","string"]}`)}, candidate: payNumber,
			exact: []string{
				`FULL_TRANSITIVE: /properties/amount: type widened from ["integer"] to ["number"]: data written with the new schema may not be readable by version 1`,
				`FULL_TRANSITIVE: /properties/amount: type changed from ["integer","string"] to ["number"]: data written with version 2 may not be readable`,
				`FULL_TRANSITIVE: /properties/amount: type changed from ["integer","string"] to ["number"]: data written with the new schema may not be readable by version 2`,
			},
		},

		// ---- more rules ----
		{name: "first version", mode: fullTrans, candidate: payOpen},
		{
			name: "true to false", mode: backward, versions: []string{`true`}, candidate: `false`,
			exact: []string{"BACKWARD: /: the new schema forbids any value here: data written with version 1 may not be readable"},
		},
		{name: "false to anything", mode: backward, versions: []string{`false`}, candidate: `{"type":"string"}`},
		{
			name: "accept-all to typed", mode: backward, versions: []string{`{}`}, candidate: `{"type":"string"}`,
			exact: []string{`BACKWARD: /: type narrowed from any to ["string"]: data written with version 1 may not be readable`},
		},
		{
			name: "integer bounds written differently", mode: full,
			versions: []string{payWith(`{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":10}`)}, candidate: payWith(`{"type":"integer","minimum":1,"maximum":9}`),
		},
		{
			name: "number lower bound made exclusive", mode: backward,
			versions: []string{payWith(`{"type":"number","minimum":0}`)}, candidate: payWith(`{"type":"number","exclusiveMinimum":0}`),
			exact: []string{"BACKWARD: /properties/amount: lower bound raised from minimum 0 to exclusiveMinimum 0: data written with version 1 may not be readable"},
		},
		{
			name: "multipleOf", mode: full,
			versions: []string{payWith(`{"type":"number","multipleOf":0.5}`)}, candidate: payWith(`{"type":"number","multipleOf":0.25}`),
			exact: []string{"FULL: /properties/amount: multipleOf changed from 0.5 to 0.25: data written with the new schema may not be readable by version 1"},
		},
		{
			name: "enum values checked against bounds", mode: backward,
			versions: []string{payWith(`{"enum":[1,5,50]}`)}, candidate: payWith(`{"type":"integer","maximum":10}`),
			exact: []string{"BACKWARD: /properties/amount: value 50 of the old schema is rejected by maximum 10: data written with version 1 may not be readable"},
		},
		{
			name: "const changed", mode: backward, versions: []string{`{"const":"v1"}`}, candidate: `{"const":"v2"}`,
			exact: []string{`BACKWARD: /: const changed from "v1" to "v2": data written with version 1 may not be readable`},
		},
		{
			name: "enum added to free string", mode: backward, versions: []string{`{"type":"string"}`}, candidate: `{"type":"string","enum":["a","b"]}`,
			exact: []string{`BACKWARD: /: enum ["a","b"] added: data written with version 1 may not be readable`},
		},
		{
			name: "string rules", mode: backward,
			versions:  []string{`{"type":"string","minLength":1,"maxLength":20,"pattern":"^[a-z]+$"}`},
			candidate: `{"type":"string","minLength":2,"maxLength":10,"pattern":"^[a-z]*$"}`,
			exact: []string{
				"BACKWARD: /: maxLength lowered from 20 to 10: data written with version 1 may not be readable",
				"BACKWARD: /: minLength raised from 1 to 2: data written with version 1 may not be readable",
				`BACKWARD: /: pattern changed from "^[a-z]+$" to "^[a-z]*$": data written with version 1 may not be readable`,
			},
		},
		{
			name: "array rules", mode: backward,
			versions:  []string{`{"type":"array","prefixItems":[{"type":"string"}],"items":{"type":"integer"},"maxItems":5}`},
			candidate: `{"type":"array","prefixItems":[{"type":"string"},{"type":"integer","minimum":0}],"items":false,"maxItems":3,"uniqueItems":true}`,
			exact: []string{
				"BACKWARD: /: maxItems lowered from 5 to 3: data written with version 1 may not be readable",
				"BACKWARD: /: uniqueItems added: data written with version 1 may not be readable",
				"BACKWARD: /items: items beyond the tuple are no longer allowed: data written with version 1 may not be readable",
				"BACKWARD: /prefixItems/1: minimum 0 added: data written with version 1 may not be readable",
			},
		},
		{
			name: "recursive schema", mode: backward,
			versions:  []string{`{"type":"object","properties":{"name":{"type":"string"},"children":{"type":"array","items":{"$ref":"#"}}}}`},
			candidate: `{"type":"object","properties":{"name":{"type":"string","maxLength":5},"children":{"type":"array","items":{"$ref":"#"}}}}`,
			exact:     []string{"BACKWARD: /properties/name: maxLength 5 added: data written with version 1 may not be readable"},
		},
		{
			name: "anyOf alternative added", mode: backward,
			versions:  []string{`{"anyOf":[{"type":"string"},{"type":"integer"}]}`},
			candidate: `{"anyOf":[{"type":"integer"},{"type":"string"},{"type":"boolean"}]}`,
		},
		{
			name: "anyOf alternative removed", mode: backward,
			versions:  []string{`{"anyOf":[{"type":"string"},{"type":"integer"}]}`},
			candidate: `{"anyOf":[{"type":"string"},{"type":"string","format":"uuid"}]}`,
			exact:     []string{"BACKWARD: /anyOf: anyOf changed: no alternative of the new schema accepts every value the old schema allows: data written with version 1 may not be readable"},
		},
		{
			name: "nullable oneOf kept", mode: full,
			versions:  []string{`{"oneOf":[{"type":"null"},{"$ref":"#/$defs/p"}],"$defs":{"p":{"type":"object","properties":{"a":{"type":"string"}}}}}`},
			candidate: `{"oneOf":[{"type":"null"},{"type":"object","properties":{"a":{"type":"string"}}}]}`,
		},
		{
			name: "overlapping oneOf changed", mode: backward,
			versions:  []string{`{"oneOf":[{"type":"object","required":["a"]},{"type":"object","required":["b"]}]}`},
			candidate: `{"oneOf":[{"type":"object","required":["a"]},{"type":"object","required":["c"]}]}`,
			exact:     []string{"BACKWARD: /oneOf: oneOf changed: the alternatives of the old and new schema differ: data written with version 1 may not be readable"},
		},
		{
			name: "not added", mode: backward, versions: []string{`{"type":"string"}`}, candidate: `{"type":"string","not":{"const":""}}`,
			exact: []string{"BACKWARD: /not: not added: data written with version 1 may not be readable"},
		},
		{
			name: "allOf composition equivalent", mode: full,
			versions:  []string{`{"type":"object","properties":{"id":{"type":"string"},"n":{"type":"integer"}},"required":["id"]}`},
			candidate: `{"allOf":[{"$ref":"#/$defs/base"},{"properties":{"n":{"type":"integer"}}}],"$defs":{"base":{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}}}`,
		},
		{
			name: "unevaluatedProperties with $ref", mode: full,
			versions:  []string{`{"$ref":"#/$defs/base","properties":{"n":{"type":"integer"}},"unevaluatedProperties":false,"$defs":{"base":{"type":"object","properties":{"id":{"type":"string"}}}}}`},
			candidate: `{"type":"object","properties":{"id":{"type":"string"},"n":{"type":"integer"}},"additionalProperties":false}`,
		},
		{
			name: "patternProperties", mode: backward,
			versions:  []string{`{"type":"object","patternProperties":{"^x-":{"type":"string"}},"additionalProperties":false}`},
			candidate: `{"type":"object","patternProperties":{"^x-":{"type":"string","maxLength":3}},"additionalProperties":false}`,
			exact:     []string{"BACKWARD: /patternProperties/^x-: maxLength 3 added: data written with version 1 may not be readable"},
		},
		{
			name: "refs across nested $id resources and anchors", mode: backward,
			versions: []string{`{"$id":"https://example.com/root.json","type":"object","properties":{"a":{"$ref":"https://example.com/root.json#/$defs/x"},"b":{"$ref":"item.json"},"c":{"$ref":"#money"}},
			  "$defs":{"x":{"type":"string"},"money":{"$anchor":"money","type":"integer"},"item":{"$id":"item.json","type":"object","properties":{"n":{"$ref":"#/$defs/n"}},"$defs":{"n":{"type":"number"}}}}}`},
			candidate: `{"$id":"https://example.com/root.json","type":"object","properties":{"a":{"$ref":"https://example.com/root.json#/$defs/x"},"b":{"$ref":"item.json"},"c":{"$ref":"#money"}},
			  "$defs":{"x":{"type":"string"},"money":{"$anchor":"money","type":"integer","minimum":0},"item":{"$id":"item.json","type":"object","properties":{"n":{"$ref":"#/$defs/n"}},"$defs":{"n":{"type":"integer"}}}}}`,
			exact: []string{
				`BACKWARD: /properties/b/properties/n: type narrowed from ["number"] to ["integer"]: data written with version 1 may not be readable`,
				"BACKWARD: /properties/c: minimum 0 added: data written with version 1 may not be readable",
			},
		},
		{
			name: "conditional requirements in allOf", mode: backward,
			versions: []string{`{"type":"object","properties":{"kind":{"enum":["card","bank"]}},"allOf":[
			  {"if":{"properties":{"kind":{"const":"card"}}},"then":{"required":["card"]}},
			  {"if":{"properties":{"kind":{"const":"bank"}}},"then":{"required":["iban"]}}]}`},
			candidate: `{"type":"object","properties":{"kind":{"enum":["card","bank"]}},"allOf":[
			  {"if":{"properties":{"kind":{"const":"card"}}},"then":{"required":["card"]}},
			  {"if":{"properties":{"kind":{"const":"bank"}}},"then":{"required":["iban","bic"]}}]}`,
			exact: []string{"BACKWARD: /allOf/1/then/properties/bic: required property added: data written with version 1 may not be readable"},
		},
		{
			name: "property names escaped", mode: backward,
			versions:  []string{`{"type":"object","properties":{"a/b~c":{"type":"number"}}}`},
			candidate: `{"type":"object","properties":{"a/b~c":{"type":"integer"}}}`,
			exact:     []string{`BACKWARD: /properties/a~1b~0c: type narrowed from ["number"] to ["integer"]: data written with version 1 may not be readable`},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := CheckCompatibility(c.mode, c.candidate, c.versions)
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			switch {
			case c.exact != nil:
				if !reflect.DeepEqual(got, c.exact) {
					t.Fatalf("reasons:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.exact, "\n"))
				}
			case c.want != nil:
				for _, w := range c.want {
					if !containsSubstring(got, w) {
						t.Errorf("no reason contains %q; reasons:\n%s", w, strings.Join(got, "\n"))
					}
				}
			default:
				if len(got) != 0 {
					t.Fatalf("want compatible, got:\n%s", strings.Join(got, "\n"))
				}
			}
			label := strings.TrimPrefix(c.mode.String(), "COMPATIBILITY_")
			if c.mode == unspecified {
				label = "BACKWARD"
			}
			for _, r := range got {
				if !strings.HasPrefix(r, label+": /") {
					t.Errorf("reason %q does not start with the mode and a path", r)
				}
			}
		})
	}
}

func containsSubstring(list []string, s string) bool {
	for _, x := range list {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

// TestEveryModeBothWays checks each mode on one evolution pair in both
// orders: payOpen -> payNumber widens amount, payNumber -> payOpen narrows.
func TestEveryModeBothWays(t *testing.T) {
	widen, narrow := []string{payOpen, payNumber}, []string{payNumber, payOpen}
	cases := []struct {
		mode                   registryv1.Compatibility
		widenOK, narrowOK      bool
		widenWhy, narrowWhy    string
		transitiveHistoryBreak bool
	}{
		{mode: none, widenOK: true, narrowOK: true},
		{mode: unspecified, widenOK: true, narrowWhy: "BACKWARD: /properties/amount: type narrowed"},
		{mode: backward, widenOK: true, narrowWhy: "BACKWARD: /properties/amount: type narrowed"},
		{mode: backwardTrans, widenOK: true, narrowWhy: "BACKWARD_TRANSITIVE: /properties/amount: type narrowed"},
		{mode: forward, narrowOK: true, widenWhy: "FORWARD: /properties/amount: type widened"},
		{mode: forwardTrans, narrowOK: true, widenWhy: "FORWARD_TRANSITIVE: /properties/amount: type widened"},
		{mode: full, widenWhy: "FULL: /properties/amount: type widened", narrowWhy: "FULL: /properties/amount: type narrowed"},
		{mode: fullTrans, widenWhy: "FULL_TRANSITIVE: /properties/amount: type widened", narrowWhy: "FULL_TRANSITIVE: /properties/amount: type narrowed"},
	}
	for _, c := range cases {
		t.Run(c.mode.String(), func(t *testing.T) {
			for _, step := range []struct {
				pair []string
				ok   bool
				why  string
			}{{widen, c.widenOK, c.widenWhy}, {narrow, c.narrowOK, c.narrowWhy}} {
				got, err := CheckCompatibility(c.mode, step.pair[1], step.pair[:1])
				if err != nil {
					t.Fatal(err)
				}
				if step.ok != (len(got) == 0) {
					t.Fatalf("%s: compatible=%v, want %v: %q", c.mode, len(got) == 0, step.ok, got)
				}
				if !step.ok && !containsSubstring(got, step.why) {
					t.Fatalf("%s: no reason contains %q: %q", c.mode, step.why, got)
				}
			}
		})
	}
}

// TestTransitiveOnlyBreak: versions v1, v2 with the candidate equal to v2
// and v1 -> v2 a change that the mode forbids (registered earlier under a
// different mode). Only the transitive variant looks at v1.
func TestTransitiveOnlyBreak(t *testing.T) {
	cases := []struct {
		plain, transitive registryv1.Compatibility
		versions          []string
	}{
		{backward, backwardTrans, []string{payNumber, payOpen}},
		{forward, forwardTrans, []string{payOpen, payNumber}},
		{full, fullTrans, []string{payOpen, payNumber}},
		{full, fullTrans, []string{payNumber, payOpen}},
	}
	for _, c := range cases {
		cand := c.versions[1]
		got, err := CheckCompatibility(c.plain, cand, c.versions)
		if err != nil || len(got) != 0 {
			t.Fatalf("%s: %q, %v; want compatible", c.plain, got, err)
		}
		got, err = CheckCompatibility(c.transitive, cand, c.versions)
		if err != nil || len(got) == 0 {
			t.Fatalf("%s: %q, %v; want a break", c.transitive, got, err)
		}
		for _, r := range got {
			if !strings.Contains(r, "version 1") || !strings.HasPrefix(r, strings.TrimPrefix(c.transitive.String(), "COMPATIBILITY_")+": /properties/amount: ") {
				t.Errorf("%s: unexpected reason %q", c.transitive, r)
			}
		}
	}
}

func TestCheckCompatibilityErrors(t *testing.T) {
	for _, c := range []struct {
		name      string
		mode      registryv1.Compatibility
		candidate string
		versions  []string
		want      string
	}{
		{"candidate not JSON", backward, `{"type":`, []string{payOpen}, "candidate schema: schema is not valid JSON"},
		{"candidate not JSON under NONE", none, `{"type":`, []string{payOpen}, "candidate schema"},
		{"version not JSON", backward, payOpen, []string{payOpen, `nope`}, "version 2: schema is not valid JSON"},
		{"version does not compile", full, payOpen, []string{`{"type":"object","properties":{"a":{"$ref":"https://example.com/x.json"}}}`}, "version 1: schema does not compile"},
		{"candidate invalid keyword value", forward, `{"type":"object","minProperties":-1}`, []string{payOpen}, "candidate schema: schema does not compile"},
		{"empty candidate", backward, ``, nil, "candidate schema: schema is empty"},
		{"unknown mode", registryv1.Compatibility(42), payOpen, []string{payOpen}, "unknown compatibility mode"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := CheckCompatibility(c.mode, c.candidate, c.versions)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, reasons %q; want an error containing %q", err, got, c.want)
			}
		})
	}
}

// selfSchemas are realistic schemas; each must be compatible with itself
// in every mode.
var selfSchemas = []string{
	invoice, payOpen, payClosed, payOpenNote, payIntOrNumber, `true`, `false`, `{}`,
	`{"$schema":"https://json-schema.org/draft/2020-12/schema","$id":"https://example.com/order.json","type":"object",
	  "properties":{"id":{"type":"string","format":"uuid"},"lines":{"type":"array","minItems":1,"items":{"$ref":"#/$defs/line"}},
	  "status":{"enum":["open","paid","void"]},"meta":{"type":"object","additionalProperties":{"type":"string"}},
	  "tags":{"type":"array","items":{"type":"string"},"uniqueItems":true},"total":{"type":"number","exclusiveMinimum":0}},
	  "required":["id","lines"],"additionalProperties":false,
	  "$defs":{"line":{"type":"object","properties":{"sku":{"type":"string","pattern":"^[A-Z0-9-]+$"},"qty":{"type":"integer","minimum":1}},"required":["sku","qty"]}}}`,
	`{"type":"object","properties":{"kind":{"const":"a"}},"if":{"properties":{"kind":{"const":"a"}}},"then":{"required":["x"]},"else":{"required":["y"]}}`,
	`{"oneOf":[{"type":"object","required":["a"]},{"type":"object","required":["b"]}]}`,
	`{"anyOf":[{"type":"object","properties":{"a":{"type":"string"}}},{"type":"array","items":{"$ref":"#"}}]}`,
	`{"$defs":{"node":{"type":"object","properties":{"next":{"$ref":"#/$defs/node"},"v":{"type":"integer"}}}},"$ref":"#/$defs/node"}`,
	`{"type":"array","prefixItems":[{"type":"string"},{"type":"number"}],"items":false,"contains":{"type":"string"},"minContains":1}`,
	`{"type":"object","propertyNames":{"pattern":"^[a-z]+$"},"dependentRequired":{"card":["cvv"]},"dependentSchemas":{"x":{"required":["y"]}},"not":{"required":["forbidden"]}}`,
	`{"allOf":[{"$ref":"#/$defs/a"}],"unevaluatedProperties":false,"$defs":{"a":{"properties":{"p":{"type":"string"}}}}}`,
	`{"type":"object","properties":{"kind":{"enum":["card","bank"]}},"allOf":[
	  {"if":{"properties":{"kind":{"const":"card"}}},"then":{"required":["card"]}},
	  {"if":{"properties":{"kind":{"const":"bank"}}},"then":{"required":["iban"]},"else":{"not":{"required":["iban"]}}}]}`,
	`{"$id":"https://example.com/a.json","properties":{"b":{"$ref":"b.json"}},"$defs":{"b":{"$id":"b.json","$ref":"#/$defs/c","$defs":{"c":{"type":"string"}}}}}`,
	`{"type":"object","additionalProperties":{"type":"string"},"anyOf":[{"properties":{"a":{"minLength":1}}},{"required":["b"]}]}`,
}

func TestSelfCompatible(t *testing.T) {
	for i, s := range selfSchemas {
		for _, mode := range allModes {
			got, err := CheckCompatibility(mode, s, []string{s, s})
			if err != nil {
				t.Fatalf("schema %d: %v", i, err)
			}
			if len(got) != 0 {
				t.Errorf("schema %d under %s: %q", i, mode, got)
			}
		}
	}
}

func TestCheckCompatibilityDeterministic(t *testing.T) {
	old := `{"type":"object","properties":{"z":{"type":"string"},"a":{"type":"number"},"m":{"enum":[1,2,3]}},"required":["z"]}`
	cand := `{"type":"object","properties":{"z":{"type":"integer"},"a":{"type":"integer"},"m":{"enum":[1]},"b":{"type":"string"}},"required":["z","b"],"additionalProperties":false}`
	first, err := CheckCompatibility(fullTrans, cand, []string{old, old})
	if err != nil {
		t.Fatal(err)
	}
	if len(first) < 5 {
		t.Fatalf("expected several reasons, got %q", first)
	}
	for range 20 {
		again, _ := CheckCompatibility(fullTrans, cand, []string{old, old})
		if !reflect.DeepEqual(first, again) {
			t.Fatalf("not deterministic:\n%q\n%q", first, again)
		}
	}
	paths := make([]string, len(first))
	for i, r := range first {
		paths[i] = strings.SplitN(r, ": ", 3)[1]
	}
	for i := 1; i < len(paths); i++ {
		if paths[i] < paths[i-1] {
			t.Fatalf("reasons not sorted by path: %q", first)
		}
	}
}

func FuzzCheckCompatibility(f *testing.F) {
	seeds := append([]string{
		payNumber, payOpenCurrency, payOpenAmountOptional, withCurrency(`["EUR"]`),
		`{"type":["integer","string"],"minimum":1e400,"maximum":-0.5,"multipleOf":0}`,
		`{"$ref":"#/$defs/a","$defs":{"a":{"$ref":"#/$defs/b"},"b":{"allOf":[{"$ref":"#"}]}}}`,
		`{"anyOf":[{"anyOf":[{"type":"null"},{"$ref":"#"}]},{"oneOf":[{"const":1},{"enum":[1,2]}]}]}`,
		`{"items":[{"type":"string"}],"additionalItems":false}`,
		`{"patternProperties":{"(":{}}}`,
	}, selfSchemas...)
	for i, a := range seeds {
		f.Add(a, seeds[(i+1)%len(seeds)])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		for _, mode := range allModes {
			got, err := CheckCompatibility(mode, a, []string{b})
			if err != nil && got != nil {
				t.Fatalf("reasons with an error: %q, %v", got, err)
			}
			if mode == none && got != nil {
				t.Fatalf("NONE gave reasons: %q", got)
			}
		}
		first, err := CheckCompatibility(fullTrans, b, []string{a, b})
		if err != nil {
			return
		}
		again, _ := CheckCompatibility(fullTrans, b, []string{a, b})
		if !reflect.DeepEqual(first, again) {
			t.Fatalf("not deterministic: %q then %q", first, again)
		}
	})
}
