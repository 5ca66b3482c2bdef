package catalogfile

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// plan parses text and plans it against the fake, with verdicts.
func plan(t *testing.T, reg *fakeRegistry, text string) *Plan {
	t.Helper()
	ctx := context.Background()
	f := parse(t, text)
	st, err := Fetch(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPlan(st, f)
	if err := p.Check(ctx, reg); err != nil {
		t.Fatal(err)
	}
	return p
}

func apply(t *testing.T, reg *fakeRegistry, p *Plan) string {
	t.Helper()
	var out bytes.Buffer
	if err := Apply(context.Background(), reg, p, &out); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	return out.String()
}

func kinds(p *Plan) []string {
	var out []string
	for _, c := range p.Changes {
		s := c.Kind.String() + " " + c.Name
		if c.AfterSchema {
			s += " (after schema)"
		}
		out = append(out, s)
	}
	return out
}

func text(p *Plan) string {
	var b bytes.Buffer
	p.Write(&b)
	return b.String()
}

func export(t *testing.T, reg *fakeRegistry) []byte {
	t.Helper()
	st, err := Fetch(context.Background(), reg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Export(st).Marshal("exported")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPlanFromEmptyRegistry(t *testing.T) {
	reg := newFake()
	p := plan(t, reg, sampleFile)
	want := []string{"create domain billing", "create domain identity", "create event type billing.invoice.paid",
		"create event type billing.invoice.created", "create event type identity.user.created", "create product payments-pro"}
	if got := kinds(p); !slices.Equal(got, want) {
		t.Errorf("plan = %v, want %v", got, want)
	}
	out := text(p)
	for _, w := range []string{
		"+ create domain billing\n    description: \"Invoices and payments.\"\n    owner: \"payments-team\"\n",
		"+ create event type billing.invoice.paid\n",
		"    visibility: public\n", "    retention: maxAge 720h, maxEvents 1000000\n", "    partitions: 4\n",
		"    schema: version 1\n", "    examples: [card]\n",
		"    sunset: 2031-06-30T00:00:00Z\n",
		"+ create product payments-pro\n    description: \"Every billing event.\"\n    eventTypes: [billing.*]\n",
		"Plan: 6 to create, 0 to update, 0 schema version(s) to add.",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("plan text lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "(none)") {
		t.Errorf("a create shows unset fields:\n%s", out)
	}
	if len(reg.mutations()) != 0 {
		t.Errorf("planning changed the registry: %v", reg.mutations())
	}
	apply(t, reg, p)
	paid := reg.types["billing.invoice.paid"]
	if paid.GetVisibility() != registryv1.Visibility_VISIBILITY_PUBLIC || paid.GetPartitions() != 4 ||
		paid.GetRetention().GetMaxAge().AsDuration() != 720*time.Hour || len(paid.GetExamples()) != 1 ||
		paid.GetCompatibility() != registryv1.Compatibility_COMPATIBILITY_BACKWARD_TRANSITIVE {
		t.Errorf("created type = %v", paid)
	}
	if got := reg.types["identity.user.created"].GetVisibility(); got != registryv1.Visibility_VISIBILITY_UNSPECIFIED {
		t.Errorf("unmanaged visibility sent as %v", got)
	}
}

// TestApplyIsIdempotent: applying a file twice changes nothing the second
// time; exporting and applying the export changes nothing; exporting is
// stable.
func TestApplyIsIdempotent(t *testing.T) {
	reg := newFake()
	apply(t, reg, plan(t, reg, sampleFile))
	before := len(reg.mutations())

	p := plan(t, reg, sampleFile)
	if !p.Empty() {
		t.Fatalf("second plan not empty:\n%s", text(p))
	}
	if !strings.Contains(text(p), "No changes") {
		t.Errorf("empty plan text: %s", text(p))
	}
	apply(t, reg, p)

	exported := export(t, reg)
	p = plan(t, reg, string(exported))
	if !p.Empty() {
		t.Fatalf("plan of the export not empty:\n%s\n%s", text(p), exported)
	}
	if again := export(t, reg); !bytes.Equal(again, exported) {
		t.Errorf("export not stable:\n%s\n---\n%s", exported, again)
	}
	if n := len(reg.mutations()); n != before {
		t.Errorf("idempotent applies changed the registry: %v", reg.mutations()[before:])
	}
}

func TestPlanUpdatesInOrder(t *testing.T) {
	reg := newFake()
	apply(t, reg, plan(t, reg, sampleFile))

	changed := strings.NewReplacer(
		"description: Invoices and payments.", "description: Invoices, payments and refunds.",
		"    visibility: public\n", "    visibility: partner\n",
		// A compatible change: a bound relaxed.
		"ratio: {type: number, maximum: 1.0}", "ratio: {type: number, maximum: 2.0}",
		// An example of the new version (2): it must wait for it.
		"      - name: card\n", "      - name: card\n        schemaVersion: 2\n",
		"eventTypes: [billing.*]", "eventTypes: [billing.*, identity.*]",
	).Replace(sampleFile)
	p := plan(t, reg, changed)
	want := []string{"update domain billing", "update event type billing.invoice.paid", "add schema version to billing.invoice.paid",
		"update event type billing.invoice.paid (after schema)", "update product payments-pro"}
	if got := kinds(p); !slices.Equal(got, want) {
		t.Fatalf("plan = %v, want %v", got, want)
	}
	out := text(p)
	for _, w := range []string{
		"~ update domain billing\n    description: \"Invoices and payments.\" -> \"Invoices, payments and refunds.\"\n",
		"~ update event type billing.invoice.paid\n    visibility: public -> partner\n",
		"~ add schema version to billing.invoice.paid (version 2): compatible\n    ~ /properties/ratio/maximum: 1.0 -> 2.0\n",
		"~ update event type billing.invoice.paid (examples, after the new schema version)\n    examples: [card] -> [card] (content changed)\n",
		"~ update product payments-pro\n    eventTypes: [billing.*] -> [billing.*, identity.*]\n",
		"Plan: 0 to create, 4 to update, 1 schema version(s) to add.",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("plan text lacks %q:\n%s", w, out)
		}
	}
	apply(t, reg, p)
	if paid := reg.types["billing.invoice.paid"]; paid.GetSchemaVersion() != 2 || paid.GetExamples()[0].GetSchemaVersion() != 2 ||
		paid.GetVisibility() != registryv1.Visibility_VISIBILITY_PARTNER || paid.GetOwner() != "payments-team" {
		t.Errorf("after apply: %v", paid)
	}
	if p := plan(t, reg, changed); !p.Empty() {
		t.Errorf("plan after apply not empty:\n%s", text(p))
	}
}

func TestIncompatibleSchemaIsRefusedBeforeAnyChange(t *testing.T) {
	reg := newFake()
	apply(t, reg, plan(t, reg, sampleFile))
	before := len(reg.mutations())

	// invoice_id changes type, and the domain changes too: nothing of the
	// plan may be applied.
	broken := strings.NewReplacer(
		"invoice_id: {type: string, pattern: \"^inv_\"}", "invoice_id: {type: integer}",
		"owner: identity-team", "owner: someone-else",
	).Replace(sampleFile)
	p := plan(t, reg, broken)
	bad := p.Incompatible()
	if len(bad) != 1 || bad[0].Name != "billing.invoice.paid" || len(bad[0].Verdict.Reasons) == 0 {
		t.Fatalf("incompatible = %v\n%s", bad, text(p))
	}
	out := text(p)
	if !strings.Contains(out, "! add schema version to billing.invoice.paid (version 2): INCOMPATIBLE: ") ||
		!strings.Contains(out, "invoice_id") || !strings.Contains(out, "(1 INCOMPATIBLE)") {
		t.Errorf("plan text:\n%s", out)
	}
	var buf bytes.Buffer
	err := Apply(context.Background(), reg, p, &buf)
	var ie *IncompatibleError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "nothing applied") || !strings.Contains(err.Error(), bad[0].Verdict.Reasons[0]) {
		t.Fatalf("apply: %v", err)
	}
	if n := len(reg.mutations()); n != before {
		t.Errorf("an incompatible plan changed the registry: %v", reg.mutations()[before:])
	}
}

func TestRelaxingCompatibilityAllowsTheSchema(t *testing.T) {
	reg := newFake()
	apply(t, reg, plan(t, reg, sampleFile))
	relaxed := strings.NewReplacer(
		"invoice_id: {type: string, pattern: \"^inv_\"}", "invoice_id: {type: integer}",
		"compatibility: backward_transitive", "compatibility: none",
	).Replace(sampleFile)
	p := plan(t, reg, relaxed)
	if got := kinds(p); !slices.Equal(got, []string{"update event type billing.invoice.paid", "add schema version to billing.invoice.paid"}) {
		t.Fatalf("plan = %v", got)
	}
	if v := p.Changes[1].Verdict; !v.Checked || !v.Compatible {
		t.Errorf("verdict = %+v", v)
	}
	apply(t, reg, p)
	if reg.types["billing.invoice.paid"].GetSchemaVersion() != 2 {
		t.Errorf("schema not added")
	}

	// To another checked mode: the verdict is left to the registry.
	stricter := strings.ReplaceAll(relaxed, "compatibility: none", "compatibility: full")
	stricter = strings.ReplaceAll(stricter, "invoice_id: {type: integer}", "invoice_id: {type: integer, minimum: 1}")
	p = plan(t, reg, stricter)
	if v := p.Changes[len(p.Changes)-1].Verdict; v == nil || v.Checked || !strings.Contains(text(p), "not checked: the compatibility mode changes to full first") {
		t.Errorf("verdict = %+v\n%s", v, text(p))
	}
}

func TestUnmanagedFieldsAreKept(t *testing.T) {
	reg := newFake()
	apply(t, reg, plan(t, reg, sampleFile))
	// A file that names the type with only its schema and a new owner:
	// description, visibility, retention and examples stay as they are.
	minimal := `version: 1
eventTypes:
  - name: billing.invoice.created
    owner: new-owner
    schema: {"type": "object", "properties": {"invoice_id": {"type": "string"}}}
`
	p := plan(t, reg, minimal)
	if got := kinds(p); !slices.Equal(got, []string{"update event type billing.invoice.created"}) {
		t.Fatalf("plan = %v\n%s", got, text(p))
	}
	if !strings.Contains(text(p), "note: left as they are (in the registry, not in the file): domain billing, domain identity, event type billing.invoice.paid, event type identity.user.created, product payments-pro") {
		t.Errorf("notes:\n%s", text(p))
	}
	apply(t, reg, p)
	et := reg.types["billing.invoice.created"]
	if et.GetOwner() != "new-owner" || et.GetVisibility() != registryv1.Visibility_VISIBILITY_PARTNER ||
		et.GetLifecycle() != registryv1.Lifecycle_LIFECYCLE_DEPRECATED || et.GetSunsetTime() == nil {
		t.Errorf("after apply: %v", et)
	}
	// Empty values are managed: they clear.
	p = plan(t, reg, strings.Replace(minimal, "owner: new-owner", "owner: \"\"\n    sunset: \"\"\n    lifecycle: active\n    examples: []", 1))
	apply(t, reg, p)
	et = reg.types["billing.invoice.created"]
	if et.GetOwner() != "" || et.GetSunsetTime() != nil || len(et.GetExamples()) != 0 {
		t.Errorf("after clearing: %v", et)
	}
}

func TestExportFormat(t *testing.T) {
	st := &State{
		Domains: []*registryv1.Domain{{Name: "billing", Description: "Money.\nAll of it.", Owner: "payments", Revision: 3}},
		EventTypes: []*registryv1.EventType{{
			Name: "billing.invoice.paid", Description: "Paid.", Revision: 9,
			Schema:     `{"type":"object","required":["id"],"properties":{"id":{"type":"string","enum":["yes","1.0","null"]},"n":{"type":"number","maximum":1.0}}}`,
			Lifecycle:  registryv1.Lifecycle_LIFECYCLE_DEPRECATED,
			SunsetTime: timestamppb.New(time.Date(2031, 6, 30, 12, 0, 0, 0, time.UTC)),
			Retention:  &registryv1.RetentionPolicy{MaxAge: durationpb.New(90 * time.Minute)},
			Examples:   []*registryv1.Example{{Name: "one", Data: `{"id":"yes","n":0.5}`, SchemaVersion: 1}},
		}},
		Products: []*registryv1.Product{{Name: "pro", EventTypes: []string{"billing.*"}}},
	}
	b, err := Export(st).Marshal("Herald catalog")
	if err != nil {
		t.Fatal(err)
	}
	want := `# Herald catalog
version: 1
domains:
  - name: billing
    description: |-
      Money.
      All of it.
    owner: payments
eventTypes:
  - name: billing.invoice.paid
    description: Paid.
    visibility: internal
    lifecycle: deprecated
    sunset: "2031-06-30T12:00:00Z"
    compatibility: backward
    retention:
      maxAge: 1h30m
    partitions: 1
    schema:
      type: object
      required:
        - id
      properties:
        id:
          type: string
          enum:
            - "yes"
            - "1.0"
            - "null"
        "n":
          type: number
          maximum: 1.0
    examples:
      - name: one
        data:
          id: "yes"
          "n": 0.5
        schemaVersion: 1
products:
  - name: pro
    eventTypes:
      - billing.*
`
	if string(b) != want {
		t.Errorf("export:\n%s\nwant:\n%s", b, want)
	}
	// Read back, it plans nothing against the same state.
	f := parse(t, string(b))
	if p := NewPlan(st, f); !p.Empty() {
		t.Errorf("export round trip plans:\n%s", text(p))
	}
	if f.EventTypes[0].schemaJSON != st.EventTypes[0].Schema {
		t.Errorf("schema changed in the round trip:\n%s\n%s", f.EventTypes[0].schemaJSON, st.EventTypes[0].Schema)
	}
}

func TestSchemaDiff(t *testing.T) {
	got := schemaDiff(`{"type":"object","required":["a"],"properties":{"a":{"type":"string"},"b":{"type":"integer"}}}`,
		`{"properties":{"a":{"type":"integer"},"c/d":{"type":"string"}},"type":"object","required":["a","c/d"]}`)
	want := []string{
		`~ /properties/a/type: "string" -> "integer"`,
		`- /properties/b: {"type":"integer"}`,
		`+ /properties/c~1d: {"type":"string"}`,
		`+ /required/1: "c/d"`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if d := schemaDiff(`{"a":1}`, `{ "a" : 1 }`); len(d) != 0 {
		t.Errorf("formatting counted: %v", d)
	}
}
