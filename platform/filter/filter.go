// Package filter compiles and runs subscription filters: CEL expressions
// over one event. The registry checks a filter when a subscription is
// created; the router runs it before each delivery.
//
// A filter sees two variables:
//
//	event  the CloudEvent attributes by name: id, source, type, specversion,
//	       subject, time, datacontenttype and every extension
//	data   the event data decoded from JSON (null when it is not JSON)
//
// and must be a boolean expression, such as
//
//	event.type == "billing.invoice.paid" && data.amount > 1000
package filter

import (
	"encoding/json"
	"fmt"
	"sync"

	"cel.dev/cel-go/cel"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/cloudevent"
)

// MaxLength is the longest filter accepted, in bytes.
const MaxLength = 4096

// costLimit bounds the work of one evaluation, so that no filter can spin
// on a large event.
const costLimit = 1_000_000

var env = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("event", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("data", cel.DynType),
	)
})

// Filter is a compiled filter; the zero value (and nil) matches everything.
type Filter struct {
	source string
	prg    cel.Program
}

// Compile parses and type-checks a filter. An empty expression matches
// every event.
func Compile(expr string) (*Filter, error) {
	if expr == "" {
		return &Filter{}, nil
	}
	if len(expr) > MaxLength {
		return nil, fmt.Errorf("filter is %d bytes, more than the %d allowed", len(expr), MaxLength)
	}
	e, err := env()
	if err != nil {
		return nil, err
	}
	ast, iss := e.Compile(expr)
	if iss.Err() != nil {
		return nil, iss.Err()
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("filter must be a boolean expression, but %q is of type %s", expr, t)
	}
	prg, err := e.Program(ast, cel.CostLimit(costLimit))
	if err != nil {
		return nil, err
	}
	return &Filter{source: expr, prg: prg}, nil
}

// String is the expression.
func (f *Filter) String() string {
	if f == nil {
		return ""
	}
	return f.source
}

// Match runs the filter on an event. An evaluation error (a missing field,
// a type mismatch) is returned with false: callers treat the event as not
// matching.
func (f *Filter) Match(ev *eventv1.CloudEvent) (bool, error) {
	if f == nil || f.prg == nil {
		return true, nil
	}
	var data any
	if raw, ok := cloudevent.JSONData(ev); ok {
		if err := json.Unmarshal(raw, &data); err != nil {
			data = nil
		}
	}
	out, _, err := f.prg.Eval(map[string]any{"event": cloudevent.Attributes(ev), "data": data})
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	return ok && b, nil
}
