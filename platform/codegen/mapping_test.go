package codegen

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// generateOne returns events.ts and events.go for one type, shop.order.placed,
// of schema.
func generateOne(t *testing.T, schema string) (ts, goSrc string) {
	t.Helper()
	types := []Type{{Name: "shop.order.placed", Schema: []byte(schema), SchemaVersion: 1}}
	tf, err := Generate(TypeScript, Options{}, types)
	if err != nil {
		t.Fatal(err)
	}
	gf, err := Generate(Go, Options{}, types)
	if err != nil {
		t.Fatal(err)
	}
	return string(tf[0].Content), string(gf[0].Content)
}

// squash collapses runs of spaces and tabs, so that expectations do not
// depend on gofmt's alignment.
func squash(s string) string {
	var b strings.Builder
	space := false
	for _, r := range s {
		if r == ' ' || r == '\t' {
			if !space {
				b.WriteByte(' ')
			}
			space = true
			continue
		}
		space = false
		b.WriteRune(r)
	}
	return b.String()
}

// mappingCases are schemas and what their generated code must say. Every
// one also compiles, with tsc --strict and go vet
// (TestEveryMappingCompiles, through MappingSchemas).
var mappingCases = []struct {
	name   string
	schema string
	ts     []string // lines (squashed) events.ts must contain
	goSrc  []string // and events.go
	not    []string // events.ts may not contain
}{
	{
		name:   "required and optional properties, integers and numbers",
		schema: `{"type":"object","required":["id","count"],"properties":{"id":{"type":"string"},"count":{"type":"integer"},"ratio":{"type":"number"},"ok":{"type":"boolean"}}}`,
		ts:     []string{"export interface ShopOrderPlaced {", "  count: number;", "  id: string;", "  ok?: boolean;", "  ratio?: number;", "  [property: string]: unknown;"},
		goSrc:  []string{"type ShopOrderPlaced struct {", "\tCount int64 `json:\"count\"`", "\tID string `json:\"id\"`", "\tOk *bool `json:\"ok,omitempty\"`", "\tRatio *float64 `json:\"ratio,omitempty\"`"},
	},
	{
		name:   "closed object has no index signature",
		schema: `{"type":"object","properties":{"a":{"type":"string"}},"additionalProperties":false}`,
		ts:     []string{"  a?: string;\n}"},
		not:    []string{"[property: string]"},
	},
	{
		name:   "unevaluatedProperties false closes too",
		schema: `{"type":"object","properties":{"a":{"type":"string"}},"unevaluatedProperties":false}`,
		not:    []string{"[property: string]"},
	},
	{
		name:   "additionalProperties as a schema beside properties",
		schema: `{"type":"object","required":["a"],"properties":{"a":{"type":"string"}},"additionalProperties":{"type":"integer"}}`,
		ts:     []string{"  [property: string]: number | string;"},
		goSrc:  []string{"\tAdditionalProperties map[string]int64 `json:\"-\"`", "func (x *ShopOrderPlaced) UnmarshalJSON(b []byte) error {", "func (x ShopOrderPlaced) MarshalJSON() ([]byte, error) {", "\t\tcase \"a\":"},
	},
	{
		name:   "maps",
		schema: `{"type":"object","properties":{"labels":{"type":"object","additionalProperties":{"type":"string"}},"free":{"type":"object"},"none":{"type":"object","additionalProperties":false}}}`,
		ts:     []string{"  labels?: { [property: string]: string };", "  free?: { [property: string]: unknown };", "  none?: { [property: string]: never };"},
		goSrc:  []string{"\tLabels map[string]string `json:\"labels,omitempty\"`", "\tFree map[string]any `json:\"free,omitempty\"`"},
	},
	{
		name:   "arrays of scalars, objects and nullable items",
		schema: `{"type":"object","properties":{"tags":{"type":"array","items":{"type":"string"}},"items":{"type":"array","items":{"type":"object","required":["sku"],"properties":{"sku":{"type":"string"}}}},"maybe":{"type":"array","items":{"type":["integer","null"]}},"any":{"type":"array"}}}`,
		ts:     []string{"  tags?: string[];", "  items?: ShopOrderPlacedItemsItem[];", "export interface ShopOrderPlacedItemsItem {", "  sku: string;", "  maybe?: (number | null)[];", "  any?: unknown[];"},
		goSrc:  []string{"\tTags []string `json:\"tags,omitempty\"`", "\tItems []ShopOrderPlacedItemsItem `json:\"items,omitempty\"`", "\tMaybe []*int64 `json:\"maybe,omitempty\"`", "\tAny []json.RawMessage `json:\"any,omitempty\"`"},
	},
	{
		name:   "string enums and const",
		schema: `{"type":"object","required":["state"],"properties":{"state":{"enum":["open","in_progress","PAID_LATE",""]},"kind":{"const":"order"},"cur":{"type":"string","enum":["EUR","USD"]}}}`,
		ts:     []string{`export type ShopOrderPlacedState = "open" | "in_progress" | "PAID_LATE" | "";`, `export type ShopOrderPlacedKind = "order";`, "  state: ShopOrderPlacedState;", "  kind?: ShopOrderPlacedKind;"},
		goSrc: []string{"type ShopOrderPlacedState string", "\tShopOrderPlacedStateOpen ShopOrderPlacedState = \"open\"", "\tShopOrderPlacedStateInProgress ShopOrderPlacedState = \"in_progress\"",
			"\tShopOrderPlacedStatePaidLate ShopOrderPlacedState = \"PAID_LATE\"", "\tShopOrderPlacedStateValue4 ShopOrderPlacedState = \"\"", "\tShopOrderPlacedKindOrder ShopOrderPlacedKind = \"order\"",
			"\tShopOrderPlacedCurEUR ShopOrderPlacedCur = \"EUR\"", "\tState ShopOrderPlacedState `json:\"state\"`", "\tKind *ShopOrderPlacedKind `json:\"kind,omitempty\"`"},
	},
	{
		name:   "number and mixed enums, null in an enum",
		schema: `{"type":"object","properties":{"level":{"enum":[1,2,-3]},"ratio":{"enum":[0.5,1]},"mixed":{"enum":["a",1,true]},"opt":{"enum":["x",null]},"flag":{"enum":[true,false]}}}`,
		ts:     []string{"export type ShopOrderPlacedLevel = 1 | 2 | -3;", "export type ShopOrderPlacedRatio = 0.5 | 1;", "export type ShopOrderPlacedMixed = unknown;", "  opt?: ShopOrderPlacedOpt | null;", `export type ShopOrderPlacedOpt = "x";`, "export type ShopOrderPlacedFlag = true | false;"},
		goSrc:  []string{"type ShopOrderPlacedLevel int64", "\tShopOrderPlacedLevelMinus3 ShopOrderPlacedLevel = -3", "type ShopOrderPlacedRatio float64", "\tShopOrderPlacedRatio0Point5 ShopOrderPlacedRatio = 0.5", "type ShopOrderPlacedMixed = json.RawMessage", "type ShopOrderPlacedFlag bool", "\tOpt *ShopOrderPlacedOpt `json:\"opt,omitempty\"`"},
	},
	{
		name:   "nullable by type list and by oneOf",
		schema: `{"type":"object","required":["a","b"],"properties":{"a":{"type":["string","null"]},"b":{"oneOf":[{"type":"null"},{"$ref":"#/$defs/money"}]},"c":{"type":["string","integer"]}},"$defs":{"money":{"type":"object","required":["amount"],"properties":{"amount":{"type":"integer"}}}}}`,
		ts:     []string{"  a: string | null;", "  b: ShopOrderPlacedMoney | null;", "  c?: string | number;", "export interface ShopOrderPlacedMoney {"},
		goSrc:  []string{"\tA *string `json:\"a\"`", "\tB *ShopOrderPlacedMoney `json:\"b\"`", "\tC json.RawMessage `json:\"c,omitempty\"`", "// One of string, int64 (oneOf/anyOf in the schema)"},
	},
	{
		name:   "oneOf and anyOf of objects",
		schema: `{"type":"object","properties":{"pay":{"oneOf":[{"title":"card","type":"object","properties":{"last4":{"type":"string"}}},{"$ref":"#/$defs/iban"}]},"either":{"anyOf":[{"type":"string"},{"type":"array","items":{"type":"string"}}]}},"$defs":{"iban":{"type":"object","properties":{"iban":{"type":"string"}}}}}`,
		ts:     []string{"  pay?: ShopOrderPlacedPayCard | ShopOrderPlacedIban;", "  either?: string | string[];", "export interface ShopOrderPlacedPayCard {", "export interface ShopOrderPlacedIban {"},
		goSrc:  []string{"\tPay json.RawMessage `json:\"pay,omitempty\"`", "// One of ShopOrderPlacedPayCard, ShopOrderPlacedIban (oneOf/anyOf in the schema): decode it into the one that matches.", "type ShopOrderPlacedPayCard struct {"},
	},
	{
		name:   "$ref, $defs and recursion",
		schema: `{"type":"object","required":["root"],"properties":{"root":{"$ref":"#/$defs/node"},"again":{"$ref":"#"},"id":{"$ref":"#/$defs/id"},"wrapped":{"allOf":[{"$ref":"#/$defs/id"}],"description":"Wrapped."}},"$defs":{"id":{"type":"string","description":"An id."},"node":{"type":"object","required":["next"],"properties":{"next":{"$ref":"#/$defs/node"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"}}}}}}`,
		ts:     []string{"  root: ShopOrderPlacedNode;", "  again?: ShopOrderPlaced;", "  id?: ShopOrderPlacedId;", "export type ShopOrderPlacedId = string;", "  next: ShopOrderPlacedNode;", "  kids?: ShopOrderPlacedNode[];", " * Wrapped.\n   */\n  wrapped?: ShopOrderPlacedId;"},
		goSrc:  []string{"\tRoot ShopOrderPlacedNode `json:\"root\"`", "\tAgain *ShopOrderPlaced `json:\"again,omitempty\"`", "type ShopOrderPlacedID string", "\tNext *ShopOrderPlacedNode `json:\"next\"`", "\tKids []ShopOrderPlacedNode `json:\"kids,omitempty\"`", "// An id.\n//\n// Schema: shop.order.placed#/$defs/id."},
	},
	{
		name:   "properties beside oneOf: the object, the variants as a note",
		schema: `{"type":"object","properties":{"email":{"type":"string"},"phone":{"type":"string"}},"oneOf":[{"required":["email"]},{"required":["phone"]}]}`,
		ts:     []string{"The schema also has 2 alternatives (oneOf/anyOf) that these fields do not express.", "  email?: string;", "  phone?: string;"},
		goSrc:  []string{"\tEmail *string `json:\"email,omitempty\"`"},
	},
	{
		name:   "allOf merges objects",
		schema: `{"allOf":[{"$ref":"#/$defs/base"},{"type":"object","required":["extra"],"properties":{"extra":{"type":"boolean"}}}],"$defs":{"base":{"type":"object","required":["id"],"properties":{"id":{"type":"string"}}}}}`,
		ts:     []string{"export interface ShopOrderPlaced {\n  extra: boolean;\n  id: string;"},
		goSrc:  []string{"\tExtra bool `json:\"extra\"`", "\tID string `json:\"id\"`"},
	},
	{
		name:   "formats stay strings, with a note",
		schema: `{"type":"object","required":["at"],"properties":{"at":{"type":"string","format":"date-time"},"day":{"type":"string","format":"date"}}}`,
		ts:     []string{"   * Format: date-time (RFC 3339).\n   */\n  at: string;"},
		goSrc:  []string{"\t// Format: date-time (RFC 3339).\n\tAt string `json:\"at\"`", "\t// Format: date (RFC 3339 full-date).\n\tDay *string"},
	},
	{
		name:   "names: odd property names, collisions, initialisms, keywords",
		schema: `{"type":"object","properties":{"user-id":{"type":"string"},"userId":{"type":"string"},"2fa":{"type":"boolean"},"type":{"type":"string"},"été":{"type":"string"},"注文":{"type":"string"},"a.b":{"type":"object","properties":{"c":{"type":"string"}}},"url":{"type":"string"},"Event":{"type":"object","properties":{"x":{"type":"string"}}}}}`,
		ts:     []string{`  "user-id"?: string;`, "  userId?: string;", `  "2fa"?: boolean;`, "  type?: string;", `  "été"?: string;`, `  "a.b"?: ShopOrderPlacedAB;`, "  Event?: ShopOrderPlacedEvent2;"},
		goSrc:  []string{"\tUserID *string `json:\"user-id,omitempty\"`", "\tUserID2 *string `json:\"userId,omitempty\"`", "\tX2fa *bool `json:\"2fa,omitempty\"`", "\tType *string", "\tÉté *string", "\tX注文 *string", "\tAB *ShopOrderPlacedAB", "\tURL *string", "\tEvent *ShopOrderPlacedEvent2 `json:\"Event,omitempty\"`", "type ShopOrderPlacedEvent struct {\n\tEnvelope"},
	},
	{
		name:   "descriptions and deprecation become comments, safely",
		schema: `{"type":"object","description":"Root */ text.","properties":{"old":{"type":"string","description":"Line one.\nLine two.","deprecated":true}}}`,
		ts:     []string{" * Root *\\/ text.", "   * Line one.\n   * Line two.\n   * @deprecated\n   */"},
		goSrc:  []string{"// Root */ text.", "\t// Line one.\n\t// Line two.\n\t//\n\t// Deprecated: the schema marks it deprecated."},
	},
	{
		name:   "a schema that is not an object",
		schema: `{"type":"array","items":{"type":"integer"}}`,
		ts:     []string{"export type ShopOrderPlaced = number[];"},
		goSrc:  []string{"type ShopOrderPlaced []int64"},
	},
	{
		name:   "the schema true and false",
		schema: `{"type":"object","properties":{"anything":true,"nothing":false}}`,
		ts:     []string{"  anything?: unknown;", "  nothing?: never;"},
		goSrc:  []string{"\tAnything json.RawMessage `json:\"anything,omitempty\"`", "\t// The schema allows no value here: the property is never present.\n\tNothing json.RawMessage"},
	},
	{
		name:   "property names encoding/json cannot tag, and names of the methods",
		schema: `{"type":"object","properties":{"a,b":{"type":"string"},"say \"hi\"":{"type":"string"},"marshal_json":{"type":"string"},"ok":{"type":"string"}},"additionalProperties":{"type":"string"}}`,
		ts:     []string{`  "a,b"?: string;`, `  "say \"hi\""?: string;`},
		goSrc:  []string{"\t// The property \"a,b\" is left out: encoding/json cannot name it in a struct tag.", "\tMarshalJSON2 *string `json:\"marshal_json,omitempty\"`", "\tOk *string `json:\"ok,omitempty\"`", "\t\tcase \"a,b\", \"marshal_json\", \"ok\", \"say \\\"hi\\\"\":"},
	},
	{
		name:   "required but undescribed",
		schema: `{"type":"object","required":["x"],"properties":{"y":{"type":"string"}}}`,
		ts:     []string{"  x: unknown;"},
		goSrc:  []string{"\tX json.RawMessage `json:\"x\"`"},
	},
}

// MappingSchemas returns the schemas of mappingCases, for the compile
// tests of package codegen_test.
func MappingSchemas() []string {
	var out []string
	for _, c := range mappingCases {
		out = append(out, c.schema)
	}
	return out
}

func TestMapping(t *testing.T) {
	for _, c := range mappingCases {
		t.Run(c.name, func(t *testing.T) {
			ts, goSrc := generateOne(t, c.schema)
			for _, want := range c.ts {
				if !strings.Contains(squash(ts), squash(want)) {
					t.Errorf("events.ts lacks %q:\n%s", want, ts)
				}
			}
			for _, want := range c.goSrc {
				if !strings.Contains(squash(goSrc), squash(want)) {
					t.Errorf("events.go lacks %q:\n%s", want, goSrc)
				}
			}
			for _, bad := range c.not {
				if strings.Contains(ts, bad) {
					t.Errorf("events.ts has %q:\n%s", bad, ts)
				}
			}
		})
	}
}

func TestEnvelopeAndUnion(t *testing.T) {
	types := []Type{
		{Name: "billing.invoice.paid", Description: "Paid.", Schema: []byte(`{"type":"object"}`), SchemaVersion: 4},
		{Name: "billing.invoice_paid", Schema: []byte(`{"type":"object"}`), SchemaVersion: 1}, // the same PascalCase
		{Name: "billing.invoice.voided", SchemaVersion: 2},                                    // no schema
	}
	tf, err := Generate(TypeScript, Options{}, types)
	if err != nil {
		t.Fatal(err)
	}
	ts := string(tf[0].Content)
	for _, want := range []string{
		"//   billing.invoice.paid v4\n//   billing.invoice.voided no schema\n//   billing.invoice_paid v1\n",
		`export type BillingInvoicePaidEvent = CloudEvent<"billing.invoice.paid", BillingInvoicePaid>;`,
		`export type BillingInvoicePaid2Event = CloudEvent<"billing.invoice_paid", BillingInvoicePaid2>;`,
		`export type BillingInvoiceVoided = unknown;`,
		"export type HeraldEvent = BillingInvoicePaidEvent | BillingInvoiceVoidedEvent | BillingInvoicePaid2Event;",
		`export const eventTypes = ["billing.invoice.paid", "billing.invoice.voided", "billing.invoice_paid"] as const;`,
		"  type: Type;",
		"export async function verifyWebhook(",
	} {
		if !strings.Contains(ts, want) {
			t.Errorf("events.ts lacks %q:\n%s", want, ts)
		}
	}
	gf, err := Generate(Go, Options{Package: "billing"}, types)
	if err != nil {
		t.Fatal(err)
	}
	if len(gf) != 2 || gf[0].Name != "events.go" || gf[1].Name != "webhook.go" {
		t.Fatalf("files %v", gf)
	}
	goSrc := squash(string(gf[0].Content))
	for _, want := range []string{
		"// Code generated by herald codegen. DO NOT EDIT.\n//\n// Event types (schema versions):\n//   billing.invoice.paid v4\n",
		"package billing\n",
		"type BillingInvoicePaid2Event struct {\n\tEnvelope\n\tData BillingInvoicePaid2 `json:\"data\"`\n}",
		"func (*BillingInvoicePaid2Event) EventType() string { return \"billing.invoice_paid\" }",
		"type BillingInvoiceVoided = json.RawMessage",
		"\tcase \"billing.invoice_paid\":\n\t\tev = new(BillingInvoicePaid2Event)",
		`var EventTypes = []string{"billing.invoice.paid", "billing.invoice.voided", "billing.invoice_paid"}`,
	} {
		if !strings.Contains(goSrc, squash(want)) {
			t.Errorf("events.go lacks %q:\n%s", want, gf[0].Content)
		}
	}
	if !strings.HasPrefix(string(gf[1].Content), "// Code generated by herald codegen. DO NOT EDIT.") || !strings.Contains(string(gf[1].Content), "func NewWebhookVerifier(secrets ...string) (*WebhookVerifier, error)") {
		t.Errorf("webhook.go:\n%s", gf[1].Content)
	}
}

// The output depends only on the types, not on their order or on map
// iteration.
func TestDeterministic(t *testing.T) {
	types := []Type{
		{Name: "a.b.c", Schema: []byte(`{"type":"object","properties":{"z":{"type":"object","properties":{"q":{"enum":["x","y"]}}},"a":{"oneOf":[{"type":"object","properties":{"k":{"type":"string"}}},{"type":"object","properties":{"k":{"type":"integer"}}}]},"m":{"type":"string"}}}`), SchemaVersion: 2},
		{Name: "a.b.d", Schema: []byte(`{"type":"object","properties":{"z":{"type":"object","properties":{"q":{"enum":["x","y"]}}}}}`), SchemaVersion: 1},
		{Name: "x.y.z", SchemaVersion: 1},
	}
	for _, lang := range Languages {
		first, err := Generate(lang, Options{}, types)
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			shuffled := append([]Type(nil), types...)
			rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			again, err := Generate(lang, Options{}, shuffled)
			if err != nil {
				t.Fatal(err)
			}
			for i := range first {
				if !bytes.Equal(first[i].Content, again[i].Content) {
					t.Fatalf("%s: %s differs between runs", lang, first[i].Name)
				}
			}
		}
	}
}

func TestGenerateRefuses(t *testing.T) {
	ok := Type{Name: "a.b.c", Schema: []byte(`{"type":"object"}`), SchemaVersion: 1}
	cases := []struct {
		name  string
		lang  string
		opts  Options
		types []Type
		want  string
	}{
		{"unknown language", "py", Options{}, []Type{ok}, `codegen: unknown language "py": want one of go, ts`},
		{"package not an identifier", Go, Options{Package: "my-events"}, []Type{ok}, `package name "my-events"`},
		{"package upper case", Go, Options{Package: "Events"}, []Type{ok}, `package name "Events"`},
		{"package keyword", Go, Options{Package: "type"}, []Type{ok}, `package name "type"`},
		{"duplicate", TypeScript, Options{}, []Type{ok, ok}, "event type a.b.c is given twice"},
		{"bad name", TypeScript, Options{}, []Type{{Name: "Not A Name"}}, `event type "Not A Name"`},
		{"bad schema", Go, Options{}, []Type{{Name: "a.b.c", Schema: []byte(`{"type":`)}}, "event type a.b.c: schema is not valid JSON"},
		{"external ref", Go, Options{}, []Type{{Name: "a.b.c", Schema: []byte(`{"$ref":"https://example.com/s.json"}`)}}, "event type a.b.c: schema does not compile"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Generate(c.lang, c.opts, c.types)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one with %q", err, c.want)
			}
		})
	}
	if _, err := Generate("py", Options{}, nil); !errors.Is(err, ErrUnknownLanguage) {
		t.Errorf("err %v is not ErrUnknownLanguage", err)
	}
	// The package name does not matter to TypeScript.
	if _, err := Generate(TypeScript, Options{Package: "Not-Go"}, []Type{ok}); err != nil {
		t.Errorf("TypeScript with a Go-invalid package name: %v", err)
	}
}

func TestNames(t *testing.T) {
	cases := []struct {
		in      string
		goStyle bool
		want    string
	}{
		{"billing.invoice.paid", true, "BillingInvoicePaid"},
		{"invoice_id", true, "InvoiceID"},
		{"invoice_id", false, "InvoiceId"},
		{"invoiceId", true, "InvoiceID"},
		{"INVOICE_ID", false, "InvoiceId"},
		{"EUR", true, "EUR"},
		{"EUR", false, "EUR"},
		{"api-url", true, "APIURL"},
		{"user2fa", true, "User2fa"},
		{"2fa", true, "X2fa"},
		{"", true, "Fallback"},
		{"--", true, "Fallback"},
		{"注文", true, "X注文"},
		{"élan", true, "Élan"},
	}
	for _, c := range cases {
		if got := identifier(c.in, "Fallback", c.goStyle); got != c.want {
			t.Errorf("identifier(%q, go=%v) = %q, want %q", c.in, c.goStyle, got, c.want)
		}
	}
	n := newNamer("Event")
	for _, want := range []string{"Event2", "Event3"} {
		if got := n.take("Event"); got != want {
			t.Errorf("take(Event) = %q, want %q", got, want)
		}
	}
}
