package request_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/services/edge/internal/request"
)

// parser over a catalog that is never asked anything: the operator's
// requests over patterns need neither grants nor type lookups.
func parser(scope *request.Scope) *request.Parser {
	p := request.NewParser(catalog.New(nil, slog.New(slog.DiscardHandler)))
	p.ScopeOf = func(auth.Principal) *request.Scope { return scope }
	return p
}

var operator = auth.WithPrincipal(context.Background(), auth.Principal{Admin: true})

func TestScopeNarrowsTypesAndFilterInOnePlace(t *testing.T) {
	p := parser(&request.Scope{Types: []string{"billing.*", "identity.user.*"}, Filter: "data.n > 1", Expires: time.Now().Add(time.Hour)})
	for _, c := range []struct {
		types []string
		want  []string
	}{
		{[]string{"*"}, []string{"billing.*", "identity.user.*"}},
		{[]string{"billing.invoice.*"}, []string{"billing.invoice.*"}},
		{[]string{"identity.*,billing.*"}, []string{"identity.user.*", "billing.*"}},
		{nil, []string{"billing.*", "identity.user.*"}},
	} {
		r, err := p.Parse(operator, request.Params{Types: c.types})
		if err != nil {
			t.Fatalf("%v: %v", c.types, err)
		}
		if !slices.Equal(r.Patterns, c.want) {
			t.Errorf("%v: patterns %v, want %v", c.types, r.Patterns, c.want)
		}
		if got := r.Filter.String(); got != "data.n > 1" {
			t.Errorf("%v: filter %q, want the token's", c.types, got)
		}
	}
	_, err := p.Parse(operator, request.Params{Types: []string{"shipping.*"}})
	if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "the token does not allow shipping.*") {
		t.Fatalf("a type outside the token: %v", err)
	}
	r, err := p.Parse(operator, request.Params{Types: []string{"billing.*"}, Filter: "data.n < 5"})
	if err != nil || r.Filter.String() != "(data.n > 1) && (data.n < 5)" {
		t.Fatalf("filters ANDed: %v %q", err, r.Filter.String())
	}
}

func TestExpiredScope(t *testing.T) {
	p := parser(&request.Scope{Expires: time.Now().Add(-time.Second)})
	if _, err := p.Parse(operator, request.Params{Types: []string{"*"}}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("an expired token: %v", err)
	}
	// An open stream ends at the token's expiry.
	p = parser(&request.Scope{Expires: time.Now().Add(200 * time.Millisecond)})
	r, err := p.Parse(operator, request.Params{Types: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := p.Guard(context.Background(), r)
	defer stop()
	select {
	case <-ctx.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("the stream outlived its token")
	}
	if ce := request.Refusal(ctx); ce == nil || ce.Code() != connect.CodeUnauthenticated {
		t.Fatalf("ended with %v, want UNAUTHENTICATED", context.Cause(ctx))
	}
}

func TestFiltersAreCompiledOnceAndShared(t *testing.T) {
	p := parser(nil)
	a, err := p.Parse(operator, request.Params{Types: []string{"*"}, Filter: `event.type == "billing.invoice.paid"`})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Parse(operator, request.Params{Types: []string{"billing.*"}, Filter: ` event.type == "billing.invoice.paid" `})
	if err != nil {
		t.Fatal(err)
	}
	if a.Filter == nil || a.Filter != b.Filter {
		t.Fatalf("two requests with one filter got %p and %p, want one compiled filter", a.Filter, b.Filter)
	}
	if r, _ := p.Parse(operator, request.Params{Types: []string{"*"}}); r.Filter != nil {
		t.Fatal("no filter compiled to something")
	}
	for _, c := range []struct{ filter, says string }{
		{"data.n >", "filter: "},
		{"1 + 1", "filter: filter must be a boolean expression"},
		{strings.Repeat("a", 5000), "filter: filter is 5000 bytes"},
	} {
		_, err := p.Parse(operator, request.Params{Types: []string{"*"}, Filter: c.filter})
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), c.says) {
			t.Errorf("filter %.20q: %v, want INVALID_ARGUMENT saying %q", c.filter, err, c.says)
		}
	}
	for _, c := range []string{"nope", "1-x"} {
		if _, err := p.Parse(operator, request.Params{Types: []string{"*"}, Cursor: c}); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("cursor %q: %v", c, err)
		}
	}
}
