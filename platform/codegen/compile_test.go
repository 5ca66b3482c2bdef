package codegen_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/codegen"
	"github.com/heraldmesh/herald/platform/codegen/codegentest"
	"github.com/heraldmesh/herald/platform/webhook"
)

// sampleTypes are the catalog the compile tests generate from: a schema
// with most of what the mapping handles, one with none, one without a
// schema at all.
func sampleTypes(t *testing.T) []codegen.Type {
	t.Helper()
	s, err := os.ReadFile("testdata/invoice_paid.json")
	if err != nil {
		t.Fatal(err)
	}
	return []codegen.Type{
		{Name: "identity.user.created", Description: "A user signed up.", Schema: []byte(`{"type":"object"}`), SchemaVersion: 1},
		{Name: "billing.invoice.paid", Description: "An invoice was paid in full.", Schema: s, SchemaVersion: 3},
		{Name: "audit.blob.stored", SchemaVersion: 1},
	}
}

// sampleEvent is a billing.invoice.paid event as Herald delivers it.
const sampleEvent = `{"data":{"amount":4200,"currency":"EUR","customer":{"email":"ann@example.com","id":"cus_1","vip":true},` +
	`"discounts":{"WINTER":5,"code":"W26"},"invoice_id":"in_1","lines":[{"children":[{"quantity":2,"sku":"b"}],"quantity":1,"sku":"a"}],` +
	`"metadata":{"k":"v"},"note":null,"paid_at":"2026-12-03T09:00:00Z","payment":{"last4":"4242"},"priority":2,"reference":7,` +
	`"shipping_address":null,"status":"paid"},"datacontenttype":"application/json","id":"evt_1","partitionkey":"cus_1",` +
	`"source":"//billing.example/invoices","specversion":"1.0","type":"billing.invoice.paid"}`

// signedSample signs sampleEvent with a new secret, as the edge does, and
// returns the secret, the headers and the signing time.
func signedSample(t *testing.T) (string, http.Header, time.Time) {
	t.Helper()
	secret := webhook.NewSecret()
	s, err := webhook.NewSigner(webhook.NewSecret(), secret) // a rotation: the second signature is the one known
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1764752400, 0)
	h := http.Header{}
	s.Headers(h, "evt_1", at, []byte(sampleEvent))
	return secret, h, at
}

func TestGeneratedTypeScriptCompilesAndVerifies(t *testing.T) {
	files, err := codegen.Generate(codegen.TypeScript, codegen.Options{}, sampleTypes(t))
	if err != nil {
		t.Fatal(err)
	}
	secret, h, at := signedSample(t)
	dir := codegentest.TSDir(t)
	codegentest.WriteFiles(t, dir, files...)
	check := fmt.Sprintf(`import { parseWebhook, verifyWebhook, eventTypes, type BillingInvoicePaidEvent, type HeraldEvent, type EventTypeName } from "./events.js";

const received: BillingInvoicePaidEvent = %s;

function describe(ev: HeraldEvent): string {
  switch (ev.type) {
    case "billing.invoice.paid":
      return ev.data.invoice_id + " " + ev.data.currency + " " + ev.data.lines[0].sku + " " + String(ev.data.discounts?.WINTER);
    case "identity.user.created":
      return "user";
    case "audit.blob.stored":
      return "blob";
  }
}
const names: readonly EventTypeName[] = eventTypes;

const body = %s;
const headers = { "webhook-id": %q, "Webhook-Timestamp": %q, "webhook-signature": %q };
const now = new Date(%d * 1000);
const good = await verifyWebhook(%q, headers, body, { now });
if (!good.valid || good.id !== "evt_1") {
  throw new Error("a Herald signature did not verify: " + JSON.stringify(good));
}
const fetchHeaders = new Headers(headers);
const bytes = new TextEncoder().encode(body);
const viaBytes = await verifyWebhook(["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", %q], fetchHeaders, bytes, { now });
if (!viaBytes.valid) {
  throw new Error("bytes and a Headers-like object did not verify: " + JSON.stringify(viaBytes));
}
const checks: [string, Promise<{ valid: boolean }>][] = [
  ["tampered body", verifyWebhook(%q, headers, body.replace("4200", "4201"), { now })],
  ["other secret", verifyWebhook("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", headers, body, { now })],
  ["stale", verifyWebhook(%q, headers, body, { now: new Date((%d + 301) * 1000) })],
  ["early", verifyWebhook(%q, headers, body, { now: new Date((%d - 301) * 1000) })],
  ["no signature", verifyWebhook(%q, { "webhook-id": "evt_1", "webhook-timestamp": %q }, body, { now })],
];
for (const [name, result] of checks) {
  if ((await result).valid) {
    throw new Error(name + ": verified, want refused");
  }
}
const parsed = await parseWebhook(%q, headers, body, { now });
if (parsed.type !== "billing.invoice.paid" || parsed.data.amount !== 4200) {
  throw new Error("parseWebhook: " + JSON.stringify(parsed));
}
let threw = false;
try {
  await parseWebhook(%q, headers, body + " ", { now });
} catch (e) {
  threw = e instanceof Error && e.name === "WebhookVerificationError";
}
if (!threw) {
  throw new Error("parseWebhook accepted a changed body");
}
console.log("ok", describe(received), names.length);
`, sampleEvent, strconv.Quote(sampleEvent), h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature"), at.Unix(),
		secret, secret, secret, secret, at.Unix(), secret, at.Unix(), secret, h.Get("webhook-timestamp"), secret, secret)
	codegentest.WriteFiles(t, dir, codegen.File{Name: "check.ts", Content: []byte(check)})
	if out, ok := codegentest.TSC(t, dir, "--noEmit", "events.ts", "check.ts"); !ok {
		t.Fatalf("tsc --strict refused the generated TypeScript:\n%s", out)
	}
	if out, ok := codegentest.TSC(t, dir, "--outDir", "out", "events.ts", "check.ts"); !ok {
		t.Fatalf("tsc (emit): %s", out)
	}
	out, ok := codegentest.Node(t, dir, filepath.Join("out", "check.js"))
	if !ok || strings.TrimSpace(out) != "ok in_1 EUR a 5 3" {
		t.Fatalf("node check.js: %s", out)
	}
}

// Wrong events are type errors: the types say what the schema says.
func TestGeneratedTypeScriptRefusesWrongEvents(t *testing.T) {
	files, err := codegen.Generate(codegen.TypeScript, codegen.Options{}, sampleTypes(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := codegentest.TSDir(t)
	codegentest.WriteFiles(t, dir, files...)
	cases := map[string]struct {
		from, to string
		want     string
	}{
		"missing.ts":    {`"invoice_id":"in_1",`, ``, `Property 'invoice_id' is missing`},
		"enum.ts":       {`"currency":"EUR"`, `"currency":"CHF"`, `'"CHF"' is not assignable`},
		"const.ts":      {`"status":"paid"`, `"status":"open"`, `'"open"' is not assignable`},
		"integer.ts":    {`"amount":4200`, `"amount":"4200"`, `'string' is not assignable to type 'number'`},
		"closed.ts":     {`"quantity":2,"sku":"b"`, `"quantity":2,"sku":"b","colour":"red"`, `'"colour"' does not exist in type 'BillingInvoicePaidLine'`},
		"oneof.ts":      {`"payment":{"last4":"4242"}`, `"payment":{"last4":4242}`, `is not assignable`},
		"additional.ts": {`"WINTER":5`, `"WINTER":true`, `is not assignable`},
		"null.ts":       {`"lines":[`, `"lines":null,"x":[`, `'null' is not assignable`},
		"type.ts":       {`"type":"billing.invoice.paid"`, `"type":"billing.invoice.created"`, `'"billing.invoice.created"' is not assignable`},
	}
	var names []string
	for name, c := range cases {
		if !strings.Contains(sampleEvent, c.from) {
			t.Fatalf("%s: %q is not in the sample", name, c.from)
		}
		src := `import type { BillingInvoicePaidEvent } from "./events.js";` + "\n" +
			"export const ev: BillingInvoicePaidEvent = " + strings.Replace(sampleEvent, c.from, c.to, 1) + ";\n"
		codegentest.WriteFiles(t, dir, codegen.File{Name: name, Content: []byte(src)})
		names = append(names, name)
	}
	out, ok := codegentest.TSC(t, dir, append([]string{"--noEmit", "events.ts"}, names...)...)
	if ok {
		t.Fatalf("tsc accepted wrong events:\n%s", out)
	}
	for name, c := range cases {
		var mine []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, name+"(") {
				mine = append(mine, l)
			}
		}
		if len(mine) == 0 || !strings.Contains(strings.Join(mine, "\n"), c.want) {
			t.Errorf("%s: want an error with %q, got:\n%s", name, c.want, strings.Join(mine, "\n"))
		}
	}
}

func TestGeneratedGoBuildsDecodesAndVerifies(t *testing.T) {
	files, err := codegen.Generate(codegen.Go, codegen.Options{Package: "heraldevents"}, sampleTypes(t))
	if err != nil {
		t.Fatal(err)
	}
	secret, h, at := signedSample(t)
	main := fmt.Sprintf(`package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"
	"encoding/json"

	events "example.com/consumer/heraldevents"
)

func main() {
	body := []byte(%q)
	h := http.Header{}
	h.Set("webhook-id", %q)
	h.Set("webhook-timestamp", %q)
	h.Set("webhook-signature", %q)
	v, err := events.NewWebhookVerifier("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", %q)
	if err != nil {
		fail(err)
	}
	now := time.Unix(%d, 0)
	if err := v.VerifyAt(h, body, now); err != nil {
		fail(fmt.Errorf("a Herald signature: %%w", err))
	}
	tampered := append([]byte{}, body...)
	tampered[len(tampered)-3] = 'X'
	if err := v.VerifyAt(h, tampered, now); !errors.Is(err, events.ErrWebhookSignature) {
		fail(fmt.Errorf("tampered body: %%v", err))
	}
	if err := v.VerifyAt(h, body, now.Add(301*time.Second)); !errors.Is(err, events.ErrWebhookTimestamp) {
		fail(fmt.Errorf("stale: %%v", err))
	}
	if err := v.VerifyAt(http.Header{"webhook-id": {"evt_1"}}, body, now); !errors.Is(err, events.ErrWebhookHeaders) {
		fail(fmt.Errorf("no headers: %%v", err))
	}
	lower := http.Header{"webhook-id": h.Values("webhook-id"), "webhook-timestamp": h.Values("webhook-timestamp"), "webhook-signature": h.Values("webhook-signature")}
	if err := v.VerifyAt(lower, body, now); err != nil {
		fail(fmt.Errorf("lower-case header map: %%w", err))
	}
	ev, err := events.ParseEvent(body)
	if err != nil {
		fail(err)
	}
	paid, ok := ev.(*events.BillingInvoicePaidEvent)
	if !ok {
		fail(fmt.Errorf("parsed a %%T", ev))
	}
	d := paid.Data
	var payment events.BillingInvoicePaidPaymentCard
	if err := json.Unmarshal(d.Payment, &payment); err != nil {
		fail(err)
	}
	fmt.Println(paid.ID, paid.Type, string(paid.Extensions["partitionkey"]), d.InvoiceID2, d.Amount, d.Currency == events.BillingInvoicePaidCurrencyEUR,
		d.Status == events.BillingInvoicePaidStatusPaid, d.Customer.ID, *d.Customer.Email, d.Lines[0].Children[0].SKU, d.Lines[0].Children[0].Quantity,
		d.Discounts.AdditionalProperties["WINTER"], *d.Discounts.Code, d.Note == nil, d.ShippingAddress == nil, *d.Priority, string(d.Reference), payment.Last4, d.Metadata["k"])
	again, err := json.Marshal(d.Discounts)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(again))
	if _, err := events.ParseEvent([]byte(`+"`"+`{"type":"billing.invoice.created"}`+"`"+`)); !errors.As(err, new(*events.UnknownEventTypeError)) {
		fail(fmt.Errorf("unknown type: %%v", err))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
`, sampleEvent, h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature"), secret, at.Unix())
	dir := codegentest.GoModule(t, "heraldevents", files, main)
	if out, ok := codegentest.Go(t, dir, "vet", "./..."); !ok {
		t.Fatalf("go vet: %s", out)
	}
	out, ok := codegentest.Go(t, dir, "run", ".")
	if !ok {
		t.Fatalf("go run: %s", out)
	}
	want := "evt_1 billing.invoice.paid \"cus_1\" in_1 4200 true true cus_1 ann@example.com b 2 5 W26 true true 2 7 4242 v\n" +
		`{"WINTER":5,"code":"W26"}` + "\n"
	if out != want {
		t.Fatalf("go run printed\n%s\nwant\n%s", out, want)
	}
}

// The generated Go is what gofmt writes, and a wrong use is a compile
// error (the check is not vacuous).
func TestGeneratedGoIsFormattedAndTyped(t *testing.T) {
	files, err := codegen.Generate(codegen.Go, codegen.Options{}, sampleTypes(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := codegentest.GoModule(t, "events", files, `package main

import "example.com/consumer/events"

func main() {
	var d events.BillingInvoicePaid
	d.Amount = "4200"
	_ = d
}
`)
	if out, ok := codegentest.Go(t, dir, "build", "./..."); ok || !strings.Contains(out, `cannot use "4200"`) {
		t.Fatalf("go build of a wrong use: ok=%v\n%s", ok, out)
	}
	if out, ok := codegentest.Go(t, dir, "fmt", "./events"); !ok || out != "" {
		t.Fatalf("gofmt changed the generated files (%s)", out)
	}
}

// Every schema of the mapping tests gives TypeScript that tsc --strict
// accepts and Go that go vet accepts, all in one file (so the names of
// different types do not collide either).
func TestEveryMappingCompiles(t *testing.T) {
	var types []codegen.Type
	for i, s := range codegen.MappingSchemas() {
		types = append(types, codegen.Type{Name: fmt.Sprintf("shop.case%d.done", i), Schema: []byte(s), SchemaVersion: i + 1})
	}
	types = append(types, sampleTypes(t)...)
	ts, err := codegen.Generate(codegen.TypeScript, codegen.Options{}, types)
	if err != nil {
		t.Fatal(err)
	}
	dir := codegentest.TSDir(t)
	codegentest.WriteFiles(t, dir, ts...)
	if out, ok := codegentest.TSC(t, dir, "--noEmit", "events.ts"); !ok {
		t.Errorf("tsc --strict:\n%s", out)
	}
	gf, err := codegen.Generate(codegen.Go, codegen.Options{}, types)
	if err != nil {
		t.Fatal(err)
	}
	if out, ok := codegentest.Go(t, codegentest.GoModule(t, "events", gf, ""), "vet", "./..."); !ok {
		t.Errorf("go vet:\n%s", out)
	}
}

// events.ts compiles under the strictest settings consumers use, and
// without the DOM or Node's type declarations (lib es2022 only): it
// declares the Web APIs it uses itself.
func TestGeneratedTypeScriptUnderStrictestSettings(t *testing.T) {
	var types []codegen.Type
	for i, s := range codegen.MappingSchemas() {
		types = append(types, codegen.Type{Name: fmt.Sprintf("shop.case%d.done", i), Schema: []byte(s), SchemaVersion: 1})
	}
	types = append(types, sampleTypes(t)...)
	files, err := codegen.Generate(codegen.TypeScript, codegen.Options{}, types)
	if err != nil {
		t.Fatal(err)
	}
	dir := codegentest.TSDir(t)
	codegentest.WriteFiles(t, dir, files...)
	out, ok := codegentest.TSC(t, dir, "--noEmit", "--lib", "es2022", "--types", "", "--noUncheckedIndexedAccess", "--exactOptionalPropertyTypes",
		"--noImplicitReturns", "--noUnusedLocals", "--noUnusedParameters", "--noImplicitOverride", "--noPropertyAccessFromIndexSignature",
		"--noFallthroughCasesInSwitch", "--verbatimModuleSyntax", "--isolatedModules", "events.ts")
	if !ok {
		t.Fatalf("tsc:\n%s", out)
	}
}
