package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/codegen"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/spf13/cobra"
)

// codegenFlags are the flags of herald codegen.
type codegenFlags struct {
	lang, out, pkg string
	types          []string
	registry, key  string
	timeout        time.Duration
}

func codegenCommand() *cobra.Command {
	f := &codegenFlags{}
	cmd := &cobra.Command{
		Use:   "codegen --lang ts|go [--types 'billing.*'] [--out DIR] [--package NAME]",
		Short: "Write typed event definitions (TypeScript or Go) and a webhook verifier for the catalog's types",
		Long: `Reads the event types your key may see from the registry (ListEventTypes) and writes, for
those matching --types, typed definitions generated from their JSON Schemas:

  --lang ts   events.ts: an interface per type's data, the CloudEvents envelope of each
              (BillingInvoicePaidEvent), HeraldEvent (their union, discriminated by "type") and
              verifyWebhook / parseWebhook for Standard Webhooks signatures. No imports; tsc --strict.
  --lang go   events.go and webhook.go, package --package: a struct per type's data, its envelope,
              ParseEvent, and WebhookVerifier. Standard library only.

The key is --key, else $HERALD_KEY (your application's: you get the types its audience may see),
else the operator's $HERALD_ADMIN_KEY. The output depends only on the types and their schema
versions, named in each file's header: regenerate when a schema gets a new version.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			return runCodegen(ctx, cmd.OutOrStdout(), f)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.lang, "lang", "", "the language to write: "+strings.Join(codegen.Languages, " or "))
	fs.StringSliceVar(&f.types, "types", []string{"*"}, "event types or patterns, comma-separated (billing.*, billing.invoice.paid)")
	fs.StringVarP(&f.out, "out", "o", ".", "the directory to write the files into (made if missing)")
	fs.StringVar(&f.pkg, "package", codegen.DefaultPackage, "the Go package name (--lang go)")
	fs.StringVar(&f.registry, "registry", "", "registry address, host:port or URL (default $HERALD_REGISTRY_ADDR, else "+config.DefaultRegistryAddr+")")
	fs.StringVar(&f.key, "key", "", "your application's key (default $HERALD_KEY, else the operator's $HERALD_ADMIN_KEY)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	return cmd
}

func runCodegen(ctx context.Context, stdout io.Writer, f *codegenFlags) error {
	// Everything that needs no registry is checked first.
	if f.lang == "" {
		return fmt.Errorf("give the language with --lang (%s)", strings.Join(codegen.Languages, " or "))
	}
	if !slices.Contains(codegen.Languages, f.lang) {
		return fmt.Errorf("unknown --lang %q: want %s", f.lang, strings.Join(codegen.Languages, " or "))
	}
	patterns, err := eventtype.ParsePatterns(f.types)
	if err != nil {
		return fmt.Errorf("--types: %w", err)
	}
	opts := codegen.Options{Package: f.pkg}
	if _, err := codegen.Generate(f.lang, opts, nil); err != nil {
		return fmt.Errorf("--package: %w", err)
	}
	reg, addr, err := f.client()
	if err != nil {
		return err
	}
	all, err := codegen.ListEventTypes(ctx, reg)
	if err != nil {
		return registryError(addr, err)
	}
	types := codegen.FromCatalog(all, patterns)
	if len(types) == 0 {
		return fmt.Errorf("no event type matches %s among the %d your key may see", strings.Join(patterns, ","), len(all))
	}
	files, err := codegen.Generate(f.lang, opts, types)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return err
	}
	for _, file := range files {
		path := filepath.Join(f.out, file.Name)
		if err := os.WriteFile(path, file.Content, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", path)
	}
	names := make([]string, len(types))
	for i, t := range types {
		names[i] = fmt.Sprintf("%s v%d", t.Name, t.SchemaVersion)
	}
	slices.Sort(names)
	fmt.Fprintf(stdout, "%d event types: %s\n", len(types), strings.Join(names, ", "))
	return nil
}

// client returns a registry client with the consumer's key.
func (f *codegenFlags) client() (registryv1connect.RegistryServiceClient, string, error) {
	addr := f.registry
	if addr == "" {
		addr = config.FromEnv().RegistryAddr
	}
	key := f.key
	for _, env := range []string{"HERALD_KEY", "HERALD_ADMIN_KEY"} {
		if key == "" {
			key = os.Getenv(env)
		}
	}
	if key == "" {
		return nil, "", errors.New("no key: give your application's key with --key or HERALD_KEY (or the operator's, HERALD_ADMIN_KEY)")
	}
	client, _ := registryClient(addr, key)
	return client, addr, nil
}

// registryError says what went wrong talking to the registry at addr.
func registryError(addr string, err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated:
		msg := err.Error()
		if ce := new(connect.Error); errors.As(err, &ce) {
			msg = ce.Message()
		}
		return fmt.Errorf("the registry refused the key (%s): check --key or HERALD_KEY", msg)
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeDeadlineExceeded:
		return fmt.Errorf("cannot read the catalog from the registry at %s (--registry or HERALD_REGISTRY_ADDR): %w", addr, err)
	}
	return fmt.Errorf("list event types: %w", err)
}
