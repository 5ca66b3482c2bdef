package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
)

const cliTestKey = "herald-cli-test-admin-key"

const cliCatalog = `version: 1
domains:
  - name: billing
    description: Invoices and payments.
    owner: payments-team
eventTypes:
  - name: billing.invoice.paid
    description: An invoice was paid in full.
    owner: payments-team
    visibility: public
    compatibility: backward
    retention: {maxAge: 720h}
    schema:
      type: object
      required: [invoice_id]
      properties:
        invoice_id: {type: string}
        amount: {type: integer, minimum: 0}
    examples:
      - name: simple
        data: {invoice_id: inv_1, amount: 100}
products:
  - name: payments-pro
    eventTypes: [billing.*]
`

// herald runs the CLI with args and returns its output and error.
func herald(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := catalogCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	root.SilenceUsage, root.SilenceErrors = true, true
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func startTestRegistry(t *testing.T) (string, registryv1connect.RegistryServiceClient) {
	t.Helper()
	srv := testutil.Redis(t)
	reg, err := registry.New(registry.Config{
		Common: config.Common{RedisURL: srv.URL(), AdminKey: cliTestKey},
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
		<-done
	})
	client := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(addr.String()), rpc.ClientOptions(cliTestKey)...)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := client.ListDomains(context.Background(), connect.NewRequest(&registryv1.ListDomainsRequest{}))
		return connect.CodeOf(err) != connect.CodeUnavailable
	}, "registry ready")
	return addr.String(), client
}

func TestCatalogCommands(t *testing.T) {
	addr, client := startTestRegistry(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "catalog.yaml")
	if err := os.WriteFile(file, []byte(cliCatalog), 0o644); err != nil {
		t.Fatal(err)
	}
	// The registry address and key come from the environment by default.
	t.Setenv("HERALD_REGISTRY_ADDR", addr)
	t.Setenv("HERALD_ADMIN_KEY", cliTestKey)
	count := func() int {
		res, err := client.ListEventTypes(context.Background(), connect.NewRequest(&registryv1.ListEventTypesRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, et := range res.Msg.GetEventTypes() {
			if !strings.HasPrefix(et.GetName(), "herald.") { // the mesh's own types, registered at start
				n++
			}
		}
		return n
	}

	// --dry-run prints the plan and changes nothing.
	out, err := herald(t, "", "apply", "-f", file, "--dry-run")
	if err != nil || !strings.Contains(out, "+ create event type billing.invoice.paid") || !strings.Contains(out, "Dry run: nothing was changed.") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if count() != 0 {
		t.Fatal("dry run created types")
	}

	// apply, from standard input this time.
	out, err = herald(t, cliCatalog, "apply", "-f", "-")
	if err != nil || !strings.Contains(out, "done: create event type billing.invoice.paid") || !strings.Contains(out, "Applied 3 change(s).") {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	out, err = herald(t, "", "apply", "-f", file)
	if err != nil || !strings.Contains(out, "No changes") {
		t.Fatalf("second apply: %v\n%s", err, out)
	}

	// export -o, and applying the export changes nothing.
	exported := filepath.Join(dir, "exported.yaml")
	if out, err := herald(t, "", "export", "-o", exported); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	b, err := os.ReadFile(exported)
	if err != nil || !strings.Contains(string(b), "name: billing.invoice.paid") {
		t.Fatalf("exported file: %v\n%s", err, b)
	}
	out, err = herald(t, "", "apply", "-f", exported, "--registry", addr, "--key", cliTestKey)
	if err != nil || !strings.Contains(out, "No changes") {
		t.Fatalf("apply of the export: %v\n%s", err, out)
	}
	stdout, err := herald(t, "", "export")
	if err != nil || stdout != string(b) {
		t.Errorf("export to stdout differs from -o: %v", err)
	}

	// An incompatible schema: dry run reports it and fails; apply refuses.
	broken := filepath.Join(dir, "broken.yaml")
	_ = os.WriteFile(broken, []byte(strings.Replace(cliCatalog, "invoice_id: {type: string}", "invoice_id: {type: integer}", 1)), 0o644)
	out, err = herald(t, "", "apply", "-f", broken, "--dry-run")
	if err == nil || !strings.Contains(out, "! add schema version to billing.invoice.paid (version 2): INCOMPATIBLE: ") ||
		!strings.Contains(err.Error(), "INCOMPATIBLE") {
		t.Fatalf("dry run of an incompatible schema: %v\n%s", err, out)
	}
	out, err = herald(t, "", "apply", "-f", broken)
	if err == nil || !strings.Contains(err.Error(), "nothing applied") || strings.Contains(out, "done:") {
		t.Fatalf("apply of an incompatible schema: %v\n%s", err, out)
	}
	res, _ := client.GetEventType(context.Background(), connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "billing.invoice.paid"}))
	if v := res.Msg.GetEventType().GetSchemaVersion(); v != 1 {
		t.Errorf("schema version %d after a refused apply", v)
	}

	// Errors people make.
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("version: 1\neventTypes:\n  - name: billing.invoice.paid\n    colour: blue\n"), 0o644)
	if _, err := herald(t, "", "apply", "-f", bad); err == nil || !strings.Contains(err.Error(), bad+":4: field colour not found in an event type") {
		t.Errorf("unknown field: %v", err)
	}
	if _, err := herald(t, "", "apply"); err == nil || !strings.Contains(err.Error(), "-f") {
		t.Errorf("no file: %v", err)
	}
	if _, err := herald(t, "", "export", "--key", "wrong-key-wrong-key"); err == nil {
		t.Errorf("a wrong key exported")
	}
	t.Setenv("HERALD_ADMIN_KEY", "")
	if _, err := herald(t, "", "export"); err == nil || !strings.Contains(err.Error(), "HERALD_ADMIN_KEY") {
		t.Errorf("no key: %v", err)
	}
}
