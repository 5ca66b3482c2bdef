package api

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry/internal/store"
)

// checkerCall is one call of the compatibility checker.
type checkerCall struct {
	mode     registryv1.Compatibility
	versions []string
}

// TestCompatibilityVerdicts checks what the handlers do with the checker's
// verdicts, whatever the checker decides: reasons refuse a version with
// FAILED_PRECONDITION listing them all, and nothing is written.
func TestCompatibilityVerdicts(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	h := New(store.New(rdb), context.Background())
	var calls []checkerCall
	var reasons []string
	var checkErr error
	h.checkCompatibility = func(mode registryv1.Compatibility, _ string, versions []string) ([]string, error) {
		calls = append(calls, checkerCall{mode, versions})
		return reasons, checkErr
	}
	ctx := auth.WithPrincipal(context.Background(), auth.Principal{Admin: true})
	for _, et := range []*registryv1.EventType{
		{Name: "billing.invoice.paid", Schema: `{"title":"v1"}`},
		{Name: "billing.invoice.draft", Schema: `{}`, Compatibility: registryv1.Compatibility_COMPATIBILITY_NONE},
		{Name: "billing.invoice.sent", Schema: `{}`, Compatibility: registryv1.Compatibility_COMPATIBILITY_FULL_TRANSITIVE},
	} {
		if _, err := h.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et})); err != nil {
			t.Fatal(err)
		}
	}
	addVersion := func(name, schema string) error {
		_, err := h.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{EventType: name, Schema: schema}))
		return err
	}

	// No reasons: added, and the checker saw every version, oldest first,
	// with the unset mode read as BACKWARD.
	if err := addVersion("billing.invoice.paid", `{"title":"v2"}`); err != nil {
		t.Fatal(err)
	}
	if err := addVersion("billing.invoice.paid", `{"title":"v3"}`); err != nil {
		t.Fatal(err)
	}
	last := calls[len(calls)-1]
	if last.mode != registryv1.Compatibility_COMPATIBILITY_BACKWARD || !slices.Equal(last.versions, []string{`{"title":"v1"}`, `{"title":"v2"}`}) {
		t.Errorf("checker called with %v", last)
	}

	// Reasons: refused with all of them, nothing written.
	reasons = []string{"BACKWARD: /amount: type changed", "BACKWARD: /currency: required property added"}
	err := addVersion("billing.invoice.paid", `{"title":"v4"}`)
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("refusal: %v", err)
	}
	for _, r := range reasons {
		if !strings.Contains(err.Error(), r) {
			t.Errorf("%q does not list %q", err.Error(), r)
		}
	}
	_, versions, err := h.store.SchemaVersions(ctx, "billing.invoice.paid")
	if err != nil || len(versions) != 3 {
		t.Errorf("%d versions after the refusal (%v), want 3", len(versions), err)
	}
	res, err := h.CheckCompatibility(ctx, connect.NewRequest(&registryv1.CheckCompatibilityRequest{EventType: "billing.invoice.paid", Schema: `{}`}))
	if err != nil || res.Msg.GetCompatible() || !slices.Equal(res.Msg.GetReasons(), reasons) {
		t.Errorf("check: %v, %v", res, err)
	}

	// The mode is passed as it is; NONE needs no checker.
	n := len(calls)
	if err := addVersion("billing.invoice.draft", `{"type":"string"}`); err != nil || len(calls) != n {
		t.Errorf("NONE: %v, checker called %d times", err, len(calls)-n)
	}
	_ = addVersion("billing.invoice.sent", `{}`)
	if calls[len(calls)-1].mode != registryv1.Compatibility_COMPATIBILITY_FULL_TRANSITIVE {
		t.Errorf("checker called with mode %v", calls[len(calls)-1].mode)
	}

	// A checker that cannot read a schema refuses the candidate.
	reasons, checkErr = nil, errors.New("version 1: unsupported keyword")
	err = addVersion("billing.invoice.paid", `{"title":"v5"}`)
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "unsupported keyword") {
		t.Errorf("checker error: %v", err)
	}
}
