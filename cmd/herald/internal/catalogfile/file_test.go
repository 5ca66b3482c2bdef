package catalogfile

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const sampleFile = `# a catalog
version: 1
domains:
  - name: billing
    description: Invoices and payments.
    owner: payments-team
  - name: identity
    owner: identity-team
eventTypes:
  - name: billing.invoice.paid
    description: |
      An invoice was paid in full.
      Amounts are in minor units.
    owner: payments-team
    visibility: public
    lifecycle: active
    compatibility: backward_transitive
    retention: {maxAge: 30d, maxEvents: 1000000}
    partitions: 4
    schema:
      $schema: https://json-schema.org/draft/2020-12/schema
      type: object
      required: [invoice_id, total]
      properties:
        invoice_id: {type: string, pattern: "^inv_"}
        total: {$ref: "#/$defs/money"}
        paid_at: {type: string, format: date-time}
        ratio: {type: number, maximum: 1.0}
      $defs:
        money:
          type: object
          properties:
            amount: {type: integer, minimum: 0}
            currency: {type: string, enum: ["EUR", "USD", "NO"]}
    examples:
      - name: card
        summary: Paid by card
        data:
          invoice_id: inv_1
          total: {amount: 1250, currency: EUR}
          paid_at: 2031-01-02T03:04:05Z
          ratio: 0.5
  - name: billing.invoice.created
    visibility: partner
    lifecycle: deprecated
    sunset: 2031-06-30
    schema: '{"type": "object", "properties": {"invoice_id": {"type": "string"}}}'
  - name: identity.user.created
    schema: true
products:
  - name: payments-pro
    description: Every billing event.
    eventTypes: [billing.*]
`

func parse(t *testing.T, text string) *File {
	t.Helper()
	f, err := Parse("catalog.yaml", strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return f
}

func TestParse(t *testing.T) {
	f := parse(t, sampleFile)
	if len(f.Domains) != 2 || len(f.EventTypes) != 3 || len(f.Products) != 1 {
		t.Fatalf("parsed %d domains, %d types, %d products", len(f.Domains), len(f.EventTypes), len(f.Products))
	}
	if f.Domains[1].Description != nil || *f.Domains[1].Owner != "identity-team" {
		t.Errorf("identity domain = %+v", f.Domains[1])
	}
	paid := f.EventTypes[0]
	if paid.line != 10 || f.Domains[1].line != 7 || f.Products[0].line != 51 {
		t.Errorf("lines: type %d, domain %d, product %d", paid.line, f.Domains[1].line, f.Products[0].line)
	}
	if *paid.Description != "An invoice was paid in full.\nAmounts are in minor units.\n" {
		t.Errorf("description = %q", *paid.Description)
	}
	if paid.Retention.maxAge != 720*time.Hour || paid.Retention.MaxEvents != 1000000 {
		t.Errorf("retention = %+v", paid.Retention)
	}
	// The schema keeps its key order and its JSON values exactly ("NO"
	// stays a string, 1.0 stays 1.0, the date-time format a string).
	want := `{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","required":["invoice_id","total"],` +
		`"properties":{"invoice_id":{"type":"string","pattern":"^inv_"},"total":{"$ref":"#/$defs/money"},` +
		`"paid_at":{"type":"string","format":"date-time"},"ratio":{"type":"number","maximum":1.0}},` +
		`"$defs":{"money":{"type":"object","properties":{"amount":{"type":"integer","minimum":0},"currency":{"type":"string","enum":["EUR","USD","NO"]}}}}}`
	if paid.schemaJSON != want {
		t.Errorf("schema JSON:\n got %s\nwant %s", paid.schemaJSON, want)
	}
	if got := paid.Examples[0].dataJSON; got != `{"invoice_id":"inv_1","total":{"amount":1250,"currency":"EUR"},"paid_at":"2031-01-02T03:04:05Z","ratio":0.5}` {
		t.Errorf("example data = %s", got)
	}
	created := f.EventTypes[1]
	if created.schemaJSON != `{"type":"object","properties":{"invoice_id":{"type":"string"}}}` {
		t.Errorf("JSON string schema = %s", created.schemaJSON)
	}
	if created.sunset == nil || !created.sunset.Equal(time.Date(2031, 6, 30, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("sunset = %v", created.sunset)
	}
	if f.EventTypes[2].schemaJSON != "true" {
		t.Errorf("boolean schema = %s", f.EventTypes[2].schemaJSON)
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		name, text string
		want       []string // each must appear in the error
	}{
		{"empty", "", []string{"the file is empty"}},
		{"not a mapping", "- a\n- b\n", []string{"catalog.yaml:1: the file must be a mapping"}},
		{"syntax", "version: 1\ndomains: [\n", []string{"catalog.yaml:2"}},
		{"unknown top-level field", "version: 1\ndomain:\n  - name: billing\n", []string{"catalog.yaml:2: field domain not found at the top level"}},
		{"unknown event type field", "version: 1\neventTypes:\n  - name: a.b.c\n    schema: {}\n    colour: blue\n", []string{"catalog.yaml:5: field colour not found in an event type"}},
		{"unknown retention field", "version: 1\neventTypes:\n  - name: a.b.c\n    schema: {}\n    retention: {maxAges: 1h}\n", []string{"catalog.yaml:5: field maxAges not found in a retention"}},
		{"wrong type", "version: 1\neventTypes:\n  - name: a.b.c\n    schema: {}\n    partitions: many\n", []string{"catalog.yaml:5", "many"}},
		{"missing version", "domains:\n  - name: billing\n", []string{"version is missing"}},
		{"future version", "version: 2\n", []string{"version 2 is not supported"}},
		{"bad values", `version: 1
domains:
  - name: Billing
eventTypes:
  - name: billing.paid
    visibility: secret
    lifecycle: gone
    compatibility: sideways
    schema: {}
  - name: billing
    schema: {}
  - name: billing.x.y
    lifecycle: deprecated
    retention: {maxAge: soon, maxEvents: -1}
    schema: "{not json"
  - name: billing.x.y
    schema: [1, 2]
    examples:
      - summary: no name
        data: 1
      - name: bad
`, []string{
			`catalog.yaml:3: domain "Billing": not a domain name`,
			`catalog.yaml:5: event type "billing.paid": visibility "secret": want one of internal, partner, public`,
			`catalog.yaml:5: event type "billing.paid": lifecycle "gone"`,
			`catalog.yaml:5: event type "billing.paid": compatibility "sideways": want one of backward, backward_transitive, forward, forward_transitive, full, full_transitive, none`,
			`catalog.yaml:10: event type name "billing" must have at least two dotted segments`,
			`catalog.yaml:12: event type "billing.x.y": a deprecated type needs a sunset`,
			`catalog.yaml:12: event type "billing.x.y": retention.maxAge "soon"`,
			`retention.maxEvents must not be negative`,
			`catalog.yaml:15: event type "billing.x.y": schema: a string schema must be JSON text`,
			`catalog.yaml:16: event type "billing.x.y" is listed twice (first at line 12)`,
			`catalog.yaml:17: event type "billing.x.y": schema: must be a mapping`,
			`examples[0]: name is required`,
			`example "bad": data is required`,
		}},
		{"bad product", "version: 1\nproducts:\n  - name: pro\n    eventTypes: [billing.*.paid]\n  - name: pro\n", []string{
			`catalog.yaml:3: product "pro": eventTypes: pattern "billing.*.paid"`,
			`catalog.yaml:5: product "pro" is listed twice (first at line 3)`,
		}},
		{"schema required", "version: 1\neventTypes:\n  - name: a.b.c\n", []string{`catalog.yaml:3: event type "a.b.c": schema is required`}},
		{"bad sunset", "version: 1\neventTypes:\n  - name: a.b.c\n    schema: {}\n    sunset: tomorrow\n", []string{`sunset "tomorrow": want an RFC 3339 time`}},
		{"merge keys", "version: 1\neventTypes:\n  - name: a.b.c\n    schema:\n      base: &b {type: object}\n      other:\n        <<: *b\n", []string{"merge keys"}},
		{"two documents", "version: 1\n---\nversion: 1\n", []string{"more than one YAML document"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("catalog.yaml", strings.NewReader(c.text))
			if err == nil {
				t.Fatal("accepted")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Errorf("error is %T, want Errors", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestParseDurations(t *testing.T) {
	for s, want := range map[string]time.Duration{"720h": 720 * time.Hour, "30d": 720 * time.Hour, "90m": 90 * time.Minute, "1h30m": 90 * time.Minute} {
		d, err := parseDuration(s)
		if err != nil || d != want {
			t.Errorf("%s: %v, %v", s, d, err)
		}
		if back, _ := parseDuration(formatDuration(d)); back != d {
			t.Errorf("%s: format %q does not read back", s, formatDuration(d))
		}
	}
	if formatDuration(720*time.Hour) != "720h" || formatDuration(90*time.Minute) != "1h30m" || formatDuration(45*time.Second) != "45s" {
		t.Errorf("formatDuration: %s %s %s", formatDuration(720*time.Hour), formatDuration(90*time.Minute), formatDuration(45*time.Second))
	}
}
