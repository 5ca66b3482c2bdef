package catalogfile

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
)

const testAdminKey = "catalogfile-test-admin-key"

// startRegistry runs the real registry in this process on a free port,
// with a private Redis and a secret key (bridges need one), and returns a
// client with the operator's key.
func startRegistry(t *testing.T) registryv1connect.RegistryServiceClient {
	t.Helper()
	srv := testutil.Redis(t)
	reg, err := registry.New(registry.Config{
		Common: config.Common{RedisURL: srv.URL(), AdminKey: testAdminKey, SecretKey: secretbox.NewKey()},
		Addr:   "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := reg.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("registry did not stop")
		}
	})
	client := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(addr.String()), rpc.ClientOptions(testAdminKey)...)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := client.ListDomains(context.Background(), connect.NewRequest(&registryv1.ListDomainsRequest{}))
		return connect.CodeOf(err) != connect.CodeUnavailable
	}, "registry ready")
	return client
}

type session struct {
	t      *testing.T
	client registryv1connect.RegistryServiceClient
}

func (s session) plan(text string) *Plan {
	s.t.Helper()
	ctx := context.Background()
	f := parse(s.t, text)
	st, err := Fetch(ctx, s.client)
	if err != nil {
		s.t.Fatalf("fetch: %v", err)
	}
	p := NewPlan(st, f)
	if err := p.Check(ctx, s.client); err != nil {
		s.t.Fatalf("check: %v", err)
	}
	return p
}

func (s session) export() []byte {
	s.t.Helper()
	st, err := Fetch(context.Background(), s.client)
	if err != nil {
		s.t.Fatal(err)
	}
	b, err := Export(st).Marshal("export")
	if err != nil {
		s.t.Fatal(err)
	}
	return b
}

// TestRealRegistry runs catalog files against the real registry service:
// apply, idempotency, export round trip, dry run, an incompatible schema
// change refused with the registry's reasons, and a compatible one added.
func TestRealRegistry(t *testing.T) {
	s := session{t: t, client: startRegistry(t)}
	ctx := context.Background()

	// Apply to the empty registry.
	p := s.plan(sampleFile)
	if len(p.Changes) != 6 {
		t.Fatalf("first plan:\n%s", text(p))
	}
	var out bytes.Buffer
	if err := Apply(ctx, s.client, p, &out); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	res, err := s.client.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "billing.invoice.paid"}))
	if err != nil {
		t.Fatal(err)
	}
	paid := res.Msg.GetEventType()
	if paid.GetPartitions() != 4 {
		t.Errorf("CreateEventType with partitions 4 made a type with %d partitions: the registry must keep event_type.partitions on create", paid.GetPartitions())
	}
	if paid.GetVisibility() != registryv1.Visibility_VISIBILITY_PUBLIC ||
		paid.GetCompatibility() != registryv1.Compatibility_COMPATIBILITY_BACKWARD_TRANSITIVE ||
		paid.GetRetention().GetMaxAge().AsDuration() != 720*time.Hour || len(paid.GetExamples()) != 1 ||
		canonicalJSON(paid.GetSchema()) != canonicalJSON(parse(t, sampleFile).EventTypes[0].schemaJSON) {
		t.Errorf("created type = %v", paid)
	}

	// Idempotent: the same file again plans nothing.
	if p := s.plan(sampleFile); !p.Empty() {
		t.Fatalf("second plan not empty:\n%s", text(p))
	}

	// Export, and the export plans nothing; export again is the same.
	exported := s.export()
	if p := s.plan(string(exported)); !p.Empty() {
		t.Fatalf("plan of the export not empty:\n%s\n%s", text(p), exported)
	}
	for _, want := range []string{"name: billing.invoice.paid", "visibility: public", "maxAge: 720h", "partitions: 4",
		"$ref: '#/$defs/money'", "sunset: \"2031-06-30T00:00:00Z\"", "eventTypes:\n      - billing.*"} {
		if !strings.Contains(string(exported), want) {
			t.Errorf("export lacks %q:\n%s", want, exported)
		}
	}
	if again := s.export(); !bytes.Equal(again, exported) {
		t.Errorf("export not stable")
	}

	// Dry run of a change: a plan, nothing changed.
	changed := strings.NewReplacer(
		"description: Invoices and payments.", "description: Invoices, payments and refunds.",
		"ratio: {type: number, maximum: 1.0}", "ratio: {type: number, maximum: 2.0}",
		"eventTypes: [billing.*]", "eventTypes: [billing.*, identity.*]",
	).Replace(sampleFile)
	p = s.plan(changed)
	if got := kinds(p); strings.Join(got, "|") != "update domain billing|add schema version to billing.invoice.paid|update product payments-pro" {
		t.Fatalf("plan = %v\n%s", got, text(p))
	}
	if v := p.Changes[1].Verdict; v == nil || !v.Checked || !v.Compatible {
		t.Errorf("verdict of a relaxed bound = %+v", v)
	}
	// (a dry run is a plan that is not applied: the next export is unchanged)
	if after := s.export(); !bytes.Equal(after, exported) {
		t.Errorf("planning changed the registry")
	}

	// An incompatible change: reported with the registry's reasons, and
	// refused by apply before anything changes.
	broken := strings.NewReplacer(
		"invoice_id: {type: string, pattern: \"^inv_\"}", "invoice_id: {type: integer}",
		"owner: identity-team", "owner: someone-else",
	).Replace(sampleFile)
	p = s.plan(broken)
	bad := p.Incompatible()
	if len(bad) != 1 || bad[0].Name != "billing.invoice.paid" || len(bad[0].Verdict.Reasons) == 0 ||
		!strings.Contains(strings.Join(bad[0].Verdict.Reasons, " "), "invoice_id") {
		t.Fatalf("incompatible = %+v\n%s", bad, text(p))
	}
	if !strings.Contains(text(p), "! add schema version to billing.invoice.paid (version 2): INCOMPATIBLE: ") {
		t.Errorf("plan text:\n%s", text(p))
	}
	out.Reset()
	err = Apply(ctx, s.client, p, &out)
	var ie *IncompatibleError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), bad[0].Verdict.Reasons[0]) {
		t.Fatalf("apply of an incompatible plan: %v", err)
	}
	if after := s.export(); !bytes.Equal(after, exported) {
		t.Errorf("a refused apply changed the registry:\n%s", after)
	}
	// The registry itself refuses it too, with the same reasons.
	_, err = s.client.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{
		EventType: "billing.invoice.paid", Schema: bad[0].Schema}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), bad[0].Verdict.Reasons[0]) {
		t.Errorf("registry's own refusal: %v", err)
	}

	// The compatible change applies, then plans nothing.
	out.Reset()
	if err := Apply(ctx, s.client, s.plan(changed), &out); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	if p := s.plan(changed); !p.Empty() {
		t.Errorf("plan after apply:\n%s", text(p))
	}
	vs, err := s.client.ListSchemaVersions(ctx, connect.NewRequest(&registryv1.ListSchemaVersionsRequest{EventType: "billing.invoice.paid"}))
	if err != nil || len(vs.Msg.GetSchemaVersions()) != 2 {
		t.Errorf("schema versions: %v, %v", vs, err)
	}

	// Examples of the new version wait for it; the compatibility mode is
	// relaxed before an otherwise incompatible version.
	next := strings.NewReplacer(
		"invoice_id: {type: string, pattern: \"^inv_\"}", "invoice_id: {type: integer}",
		"invoice_id: inv_1", "invoice_id: 1",
		"      - name: card\n", "      - name: card\n        schemaVersion: 3\n",
		"compatibility: backward_transitive", "compatibility: none",
	).Replace(changed)
	p = s.plan(next)
	if got := kinds(p); strings.Join(got, "|") != "update event type billing.invoice.paid|add schema version to billing.invoice.paid|update event type billing.invoice.paid (after schema)" {
		t.Fatalf("plan = %v\n%s", got, text(p))
	}
	out.Reset()
	if err := Apply(ctx, s.client, p, &out); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	if p := s.plan(next); !p.Empty() {
		t.Errorf("plan after apply:\n%s", text(p))
	}
	if p := s.plan(string(s.export())); !p.Empty() {
		t.Errorf("plan of the final export:\n%s", text(p))
	}
}
