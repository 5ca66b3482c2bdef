package registry_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// TestSchemaCompatibility runs the real checker (platform/schema): what the
// registry does with each verdict.
func TestSchemaCompatibility(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"}) // unset: BACKWARD
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.draft", Compatibility: registryv1.Compatibility_COMPATIBILITY_NONE})

	// amount becomes a string and currency is required: data written with
	// version 1 does not conform.
	breaking := `{"type":"object","required":["invoice_id","amount","currency"],"properties":{
		"invoice_id":{"type":"string"},"amount":{"type":"string"},"currency":{"type":"string"}}}`
	// Dropping the minimum only accepts more.
	relaxed := `{"type":"object","required":["invoice_id","amount"],"properties":{
		"invoice_id":{"type":"string"},"amount":{"type":"integer"}}}`

	check := func(name, schema string) *registryv1.CheckCompatibilityResponse {
		t.Helper()
		return must(e.admin.CheckCompatibility(ctx, connect.NewRequest(&registryv1.CheckCompatibilityRequest{EventType: name, Schema: schema}))).msg(t)
	}
	addVersion := func(name, schema string) (*registryv1.SchemaVersion, error) {
		res, err := e.admin.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{EventType: name, Schema: schema}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetSchemaVersion(), nil
	}

	// CheckCompatibility says why, and writes nothing.
	before := e.revision(t)
	verdict := check("billing.invoice.paid", breaking)
	if verdict.GetCompatible() || len(verdict.GetReasons()) < 2 {
		t.Fatalf("breaking change under BACKWARD: %v", verdict)
	}
	// CreateSchemaVersion refuses with every reason.
	_, err := addVersion("billing.invoice.paid", breaking)
	wantCode(t, "breaking change under BACKWARD", err, connect.CodeFailedPrecondition, append([]string{"BACKWARD", "billing.invoice.paid"}, verdict.GetReasons()...)...)
	if e.revision(t) != before {
		t.Errorf("a refused schema version wrote something")
	}
	versions := must(e.admin.ListSchemaVersions(ctx, connect.NewRequest(&registryv1.ListSchemaVersionsRequest{EventType: "billing.invoice.paid"}))).msg(t).GetSchemaVersions()
	if len(versions) != 1 {
		t.Errorf("%d versions after a refusal", len(versions))
	}

	// A compatible change is accepted.
	if verdict := check("billing.invoice.paid", relaxed); !verdict.GetCompatible() || len(verdict.GetReasons()) != 0 {
		t.Errorf("relaxing change under BACKWARD: %v", verdict)
	}
	if v, err := addVersion("billing.invoice.paid", relaxed); err != nil || v.GetVersion() != 2 {
		t.Errorf("relaxing change: %v, %v", v, err)
	}

	// Under NONE anything goes.
	if verdict := check("billing.invoice.draft", breaking); !verdict.GetCompatible() {
		t.Errorf("breaking change under NONE: %v", verdict)
	}
	if v, err := addVersion("billing.invoice.draft", breaking); err != nil || v.GetVersion() != 2 {
		t.Errorf("breaking change under NONE: %v, %v", v, err)
	}

	// A schema that does not compile is no candidate at all.
	_, err = e.admin.CheckCompatibility(ctx, connect.NewRequest(&registryv1.CheckCompatibilityRequest{EventType: "billing.invoice.paid", Schema: `{"type":7}`}))
	wantCode(t, "check a schema that does not compile", err, connect.CodeInvalidArgument, "schema")
}
