package filter

import (
	"errors"
	"strings"
	"testing"
)

func items(n int) string {
	var b strings.Builder
	b.WriteString(`{"items":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('1')
	}
	b.WriteString(`],"n":1,"zero":0}`)
	return b.String()
}

// Check refuses filters whose cost grows faster than the event, and keeps
// those that pass over the data once.
func TestCheckEstimatedCost(t *testing.T) {
	for _, expr := range []string{
		`data.items.all(x, data.items.all(y, data.items.all(z, x+y+z>=0)))`,
		`data.items.all(x, data.items.all(y, x+y>=0))`,
		`data.items.exists(x, data.items.exists(y, x == y))`,
	} {
		if _, err := Check(expr); err == nil || !strings.Contains(err.Error(), "too expensive") {
			t.Errorf("Check(%q) = %v, want too expensive", expr, err)
		}
		// Compile (the router, for subscriptions created before) still takes it.
		if _, err := Compile(expr); err != nil {
			t.Errorf("Compile(%q): %v", expr, err)
		}
	}
	for _, expr := range []string{
		``,
		`data.amount > 1000`,
		`event.type == "billing.invoice.paid" && data.currency in ["EUR", "USD"]`,
		`data.items.exists(x, x > 5)`,
		`"x" in data.tags`,
		`data.items.map(x, x * 2).all(y, y >= 0)`,
		`event.subject.startsWith("inv_") && data.note.matches("^a+b$")`,
	} {
		f, err := Check(expr)
		if err != nil {
			t.Errorf("Check(%q): %v", expr, err)
			continue
		}
		if c := f.EstimatedCost(); c > MaxEstimatedCost {
			t.Errorf("%q estimated at %d", expr, c)
		}
	}
}

// An evaluation over the cost limit, or one that fails for another reason
// than the event's shape, is ErrUnevaluable; a missing field or a type
// mismatch is not (it is no match).
func TestMatchUnevaluable(t *testing.T) {
	cases := []struct {
		expr, data  string
		unevaluable bool
	}{
		{`data.items.all(x, data.items.all(y, data.items.all(z, x+y+z>=0)))`, items(1000), true},
		{`int(data.n) / int(data.zero) == 1`, items(1), true},
		{`data.items.all(x, x >= 0)`, items(1000), false}, // within the limit: a match
		{`data.missing == 1`, items(1), false},
		{`data.items == "a"`, items(1), false},
		{`data.items[5] == 1`, items(1), false},
		{`data.n > "a"`, items(1), false},
	}
	for _, c := range cases {
		f, err := Compile(c.expr)
		if err != nil {
			t.Fatalf("Compile(%q): %v", c.expr, err)
		}
		ok, err := f.Match(event("a.b.c", c.data, nil))
		if got := errors.Is(err, ErrUnevaluable); got != c.unevaluable {
			t.Errorf("%q: Match = %v, %v; unevaluable %v, want %v", c.expr, ok, err, got, c.unevaluable)
		}
		if c.unevaluable && ok {
			t.Errorf("%q matched although it could not be evaluated", c.expr)
		}
	}
}

func FuzzCheck(f *testing.F) {
	f.Add(`data.items.all(x, data.items.all(y, x+y>=0))`)
	f.Add(`data.items.exists(x, x > 5)`)
	f.Add(`[1,2,3].map(x, [x].map(y, y)).size() > 0`)
	f.Fuzz(func(t *testing.T, expr string) {
		flt, err := Check(expr)
		if err != nil {
			return
		}
		if c := flt.EstimatedCost(); c > MaxEstimatedCost {
			t.Fatalf("Check accepted %q, estimated at %d", expr, c)
		}
	})
}
