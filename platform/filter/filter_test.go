package filter

import (
	"strings"
	"testing"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

func event(typ, data string, ext map[string]*eventv1.CloudEvent_CloudEventAttributeValue) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id: "e1", Source: "/billing", SpecVersion: "1.0", Type: typ,
		Attributes: ext, Data: &eventv1.CloudEvent_TextData{TextData: data},
	}
}

func TestMatch(t *testing.T) {
	str := func(s string) *eventv1.CloudEvent_CloudEventAttributeValue {
		return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: s}}
	}
	num := func(n int32) *eventv1.CloudEvent_CloudEventAttributeValue {
		return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeInteger{CeInteger: n}}
	}
	paid := event("billing.invoice.paid", `{"amount": 1500, "currency": "EUR", "lines": [1,2]}`,
		map[string]*eventv1.CloudEvent_CloudEventAttributeValue{"subject": str("inv_1"), "tenant": str("acme"), "priority": num(3)})
	small := event("billing.invoice.paid", `{"amount": 10}`, nil)
	notJSON := event("billing.invoice.paid", "", map[string]*eventv1.CloudEvent_CloudEventAttributeValue{"datacontenttype": str("text/plain")})
	notJSON.Data = &eventv1.CloudEvent_TextData{TextData: "hello"}

	cases := []struct {
		expr string
		ev   *eventv1.CloudEvent
		want bool
		err  bool
	}{
		{"", paid, true, false},
		{`event.type == "billing.invoice.paid"`, paid, true, false},
		{`event.type.startsWith("billing.")`, paid, true, false},
		{`event.source == "/shipping"`, paid, false, false},
		{`data.amount > 1000`, paid, true, false},
		{`data.amount > 1000`, small, false, false},
		{`data.currency in ["EUR", "USD"]`, paid, true, false},
		{`size(data.lines) == 2`, paid, true, false},
		{`event.tenant == "acme" && event.subject == "inv_1"`, paid, true, false},
		{`event.priority >= 3`, paid, true, false},
		{`has(data.currency)`, small, false, false},
		{`"tenant" in event && event.tenant == "acme"`, small, false, false},
		// A missing extension is an evaluation error: no match.
		{`event.tenant == "acme"`, small, false, true},
		// Data that is not JSON is null.
		{`data == null`, notJSON, true, false},
		{`data.amount > 1`, notJSON, false, true},
	}
	for _, c := range cases {
		f, err := Compile(c.expr)
		if err != nil {
			t.Fatalf("Compile(%q): %v", c.expr, err)
		}
		got, err := f.Match(c.ev)
		if got != c.want || (err != nil) != c.err {
			t.Errorf("%q on %s: got %v, %v; want %v (error %v)", c.expr, c.ev.GetData(), got, err, c.want, c.err)
		}
	}
}

func TestCompileRefuses(t *testing.T) {
	for expr, want := range map[string]string{
		`event.type`:                "boolean expression",
		`event.type ==`:             "Syntax error",
		`unknown == 1`:              "undeclared reference",
		strings.Repeat("a", 5000):   "more than the 4096 allowed",
		`data.amount + "x" == 1 &&`: "Syntax error",
		`1 + 1`:                     "boolean expression",
	} {
		if _, err := Compile(expr); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Compile(%.20q) = %v, want an error containing %q", expr, err, want)
		}
	}
}

func TestNilMatchesAll(t *testing.T) {
	var f *Filter
	if ok, err := f.Match(event("a.b", "{}", nil)); !ok || err != nil {
		t.Fatalf("nil filter: %v %v", ok, err)
	}
}

// The cost limit stops a filter that would do too much work on one event.
func TestCostLimit(t *testing.T) {
	f, err := Compile(`data.items.all(a, data.items.all(b, data.items.all(c, a + b + c >= 0)))`)
	if err != nil {
		t.Fatal(err)
	}
	items := "[" + strings.TrimSuffix(strings.Repeat("1,", 400), ",") + "]"
	if ok, err := f.Match(event("a.b", `{"items": `+items+`}`, nil)); ok || err == nil || !strings.Contains(err.Error(), "cost") {
		t.Fatalf("expected a cost limit error, got %v, %v", ok, err)
	}
}

func FuzzMatch(f *testing.F) {
	f.Add(`data.amount > 1000`, `{"amount": 1500}`)
	f.Add(`event.type == "a.b"`, `[1, "x", null]`)
	f.Add(`data.x.y.z == 1`, `{"x": {"y": {}}}`)
	f.Fuzz(func(t *testing.T, expr, data string) {
		flt, err := Compile(expr)
		if err != nil {
			return
		}
		ok, err := flt.Match(event("a.b", data, nil))
		if err != nil && ok {
			t.Fatalf("match with an error")
		}
	})
}
