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
//
// An evaluation is bounded by a cost limit. Check, which the registry runs
// when a subscription is created, also refuses a filter whose estimated
// cost on the largest event exceeds the limit (nested loops over the data,
// say); an evaluation that still fails for another reason than the shape
// of the data (the cost limit, a division by zero) is ErrUnevaluable, which
// the router dead-letters rather than treating it as no match.
package filter

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/checker"
	"cel.dev/cel-go/interpreter"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/cloudevent"
)

// MaxLength is the longest filter accepted, in bytes.
const MaxLength = 4096

// CostLimit bounds the work of one evaluation, so that no filter can spin
// on a large event.
const CostLimit = 1_000_000

// MaxEstimatedCost is the most a filter's cost may be estimated at, on an
// event of MaxEventBytes, to be accepted by Check. It is CostLimit times
// 100: a single pass over the data (exists, all, in) is accepted, although
// on the very largest lists it may exceed the limit and be dead-lettered;
// nested passes (whose cost grows with the square of the data) are not.
const MaxEstimatedCost = 100 * CostLimit

// MaxEventBytes bounds the size of every list, map and string a filter may
// meet, for the cost estimate: the router's default largest event.
const MaxEventBytes = cloudevent.DefaultMaxBytes

// ErrUnevaluable marks an evaluation that failed for another reason than
// the event's shape (a missing field or a type mismatch, which are no
// match): the cost limit, a division by zero, an overflow.
var ErrUnevaluable = errors.New("the filter cannot be evaluated on this event")

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
	cost   uint64 // estimated maximum cost
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
	prg, err := e.Program(ast, cel.CostLimit(CostLimit))
	if err != nil {
		return nil, err
	}
	est, err := e.EstimateCost(ast, sizeBound{})
	if err != nil {
		return nil, fmt.Errorf("estimate the cost of the filter: %w", err)
	}
	return &Filter{source: expr, prg: prg, cost: est.Max}, nil
}

// Check compiles a filter for a new subscription: as Compile, and the
// filter's cost, estimated on the largest event, must not exceed
// MaxEstimatedCost.
func Check(expr string) (*Filter, error) {
	f, err := Compile(expr)
	if err != nil {
		return nil, err
	}
	if f.cost > MaxEstimatedCost {
		return nil, fmt.Errorf("filter is too expensive: its cost on an event of %d bytes is estimated at %s, more than the %d allowed; avoid nested loops (all, exists, map, filter) over the data",
			MaxEventBytes, costString(f.cost), MaxEstimatedCost)
	}
	return f, nil
}

func costString(c uint64) string {
	if c == ^uint64(0) {
		return "more than 18446744073709551614"
	}
	return fmt.Sprint(c)
}

// EstimatedCost is the filter's cost estimated on an event of
// MaxEventBytes (0 for the empty filter).
func (f *Filter) EstimatedCost() uint64 {
	if f == nil {
		return 0
	}
	return f.cost
}

// sizeBound is the cost estimator: nothing in an event, list, map or
// string, is larger than the event.
type sizeBound struct{}

func (sizeBound) EstimateSize(checker.AstNode) *checker.SizeEstimate {
	return &checker.SizeEstimate{Min: 0, Max: MaxEventBytes}
}

func (sizeBound) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}

// String is the expression.
func (f *Filter) String() string {
	if f == nil {
		return ""
	}
	return f.source
}

// Match runs the filter on an event. An evaluation error is returned with
// false: one due to the event's shape (a missing field, a type mismatch)
// means no match; one that wraps ErrUnevaluable (the cost limit, a division
// by zero) means the filter could not say.
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
		if !noMatch(err) {
			return false, fmt.Errorf("%w: %v", ErrUnevaluable, err)
		}
		return false, err
	}
	b, ok := out.Value().(bool)
	return ok && b, nil
}

// noMatch reports an evaluation error that comes from the event's shape:
// the field or key is not there, or has another type than the filter
// expects. Such an event does not match.
func noMatch(err error) bool {
	var cancelled interpreter.EvalCancelledError
	if errors.As(err, &cancelled) {
		return false
	}
	msg := err.Error()
	for _, s := range []string{"no such key", "no such attribute", "no such field", "no such overload", "no matching overload", "index out of range", "index out of bounds", "invalid index", "type conversion error", "unsupported"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
