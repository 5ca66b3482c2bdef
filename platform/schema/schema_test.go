package schema

import (
	"strings"
	"testing"
)

const invoice = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["invoice_id", "amount"],
  "properties": {
    "invoice_id": {"type": "string"},
    "amount": {"$ref": "#/$defs/money"}
  },
  "$defs": {"money": {"type": "integer", "minimum": 0}}
}`

func TestValidate(t *testing.T) {
	s, err := Compile("billing.invoice.paid", invoice)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, data      string
		instance, rule  string
		wantViolations  bool
		wantDecodeError bool
	}{
		{name: "valid", data: `{"invoice_id":"in_1","amount":5}`},
		{name: "negative amount via internal ref", data: `{"invoice_id":"in_1","amount":-1}`, wantViolations: true, instance: "/amount", rule: "minimum"},
		{name: "missing required", data: `{"amount":1}`, wantViolations: true, instance: "", rule: "/required"},
		{name: "wrong type", data: `{"invoice_id":7,"amount":1}`, wantViolations: true, instance: "/invoice_id", rule: "/properties/invoice_id/type"},
		{name: "not json", data: `{"invoice_id":`, wantDecodeError: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vs, err := s.Validate([]byte(c.data))
			if c.wantDecodeError {
				if err == nil {
					t.Fatal("want a decode error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !c.wantViolations {
				if len(vs) != 0 {
					t.Fatalf("unexpected violations %v", vs)
				}
				return
			}
			if len(vs) == 0 {
				t.Fatal("want violations")
			}
			if vs[0].InstanceLocation != c.instance || !strings.Contains(vs[0].KeywordLocation, c.rule) {
				t.Fatalf("got %+v, want instance %q rule containing %q", vs[0], c.instance, c.rule)
			}
		})
	}
}

func TestCompileRefusesBadSchemas(t *testing.T) {
	cases := map[string]string{
		"remote ref":   `{"$ref": "https://example.com/schema.json"}`,
		"file ref":     `{"$ref": "file:///etc/passwd"}`,
		"relative ref": `{"$ref": "other.json"}`,
		"unknown ref":  `{"$ref": "#/$defs/missing"}`,
		"not json":     `{"type":`,
		"not object":   `[1,2]`,
		"bad keyword":  `{"type": "nonsense"}`,
		"empty":        ` `,
		"oversized":    `{"description":"` + strings.Repeat("x", MaxSize) + `"}`,
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Compile("t.x", text); err == nil {
				t.Fatalf("compiled %q", text)
			}
		})
	}
}

func FuzzValidate(f *testing.F) {
	s, err := Compile("billing.invoice.paid", invoice)
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"invoice_id":"a","amount":1}`))
	f.Add([]byte(`{"amount":-1}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = s.Validate(data) // must never panic
	})
}

func FuzzCompile(f *testing.F) {
	f.Add(invoice)
	f.Add(`{"$ref":"#"}`)
	f.Add(`true`)
	f.Fuzz(func(t *testing.T, text string) {
		_, _ = Compile("f.z", text)
	})
}
