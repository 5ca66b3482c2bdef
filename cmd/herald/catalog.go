package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/cmd/herald/internal/catalogfile"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/spf13/cobra"
)

// registryFlags are the connection flags every catalog verb shares.
type registryFlags struct {
	addr, key string
	timeout   time.Duration
}

func (f *registryFlags) client() (registryv1connect.RegistryServiceClient, string, error) {
	env := config.FromEnv()
	addr := f.addr
	if addr == "" {
		addr = env.RegistryAddr
	}
	key := f.key
	if key == "" {
		key = env.AdminKey
	}
	if key == "" {
		return nil, "", errors.New("no key: give the operator's key with --key or HERALD_ADMIN_KEY")
	}
	client, base := registryClient(addr, key)
	return client, base, nil
}

// registryClient is a RegistryService client of addr (host:port, or an
// http(s) URL) with key, and the base URL it calls.
func registryClient(addr, key string) (registryv1connect.RegistryServiceClient, string) {
	base := addr
	httpClient := rpc.HTTPClient() // h2c, as Herald services speak
	if strings.Contains(addr, "://") {
		base = strings.TrimSuffix(addr, "/")
		if strings.HasPrefix(addr, "https://") {
			httpClient = &http.Client{}
		}
	} else {
		base = rpc.BaseURL(addr)
	}
	return registryv1connect.NewRegistryServiceClient(httpClient, base, rpc.ClientOptions(key)...), base
}

func (f *registryFlags) context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	return ctx, func() { cancel(); stop() }
}

func catalogCommand() *cobra.Command {
	flags := &registryFlags{}
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "Catalog as code: apply a catalog file to the registry, or export the registry's catalog as one",
		Long: `A catalog file (YAML) lists domains, event types with their JSON Schemas and examples,
and products:

  version: 1
  domains:
    - name: billing
      description: Invoices and payments.
      owner: payments-team
  eventTypes:
    - name: billing.invoice.paid
      description: An invoice was paid in full.
      owner: payments-team
      visibility: public            # public | partner | internal
      lifecycle: active             # active | deprecated (needs sunset) | retired
      compatibility: backward       # none | backward[_transitive] | forward[_transitive] | full[_transitive]
      retention: {maxAge: 720h, maxEvents: 1000000}
      partitions: 4
      schema:                       # JSON Schema (draft 2020-12), as YAML or as a string of JSON
        type: object
        required: [invoice_id]
        properties:
          invoice_id: {type: string}
      examples:
        - name: simple
          summary: A paid invoice
          data: {invoice_id: inv_1}
  products:
    - name: payments-pro
      description: Every billing event.
      eventTypes: [billing.*]
  bridges:
    - name: billing-to-kafka
      application: warehouse        # the application's name (or id) it acts for
      direction: sink              # sink (mesh to system) | source (system to mesh)
      description: Billing events for the warehouse.
      disabled: false
      kafka:                       # one of kafka, amqp, mqtt, lake
        brokers: [kafka-1:9093]
        topic: herald.billing
        saslMechanism: SCRAM-SHA-512
        username: herald
        tls: true
      sink:
        types: [billing.*]
        filter: data.amount > 0
        retrySchedule: [1s, 10s, 1m]
        contentMode: binary        # binary | structured
        jsonData: false
        maxInFlight: 1000
      secretFromEnv: KAFKA_PASSWORD  # the secret is never in the file
    - name: signups-from-rabbit
      application: warehouse
      direction: source
      amqp: {url: "amqp://herald@rabbit:5672/prod", queue: signups}
      source: {eventType: identity.user.created, batchSize: 100}
    # mqtt: {broker: tcp://host:1883, protocolVersion: 5, topic: herald/{type}, qos: 1, username, clientId}
    # lake: {directory: /var/lib/herald/lake, maxFileBytes, maxFileAge: 5m}
    #    or {s3: {endpoint, region, bucket, prefix, accessKeyId}, ...}

"apply" makes the registry match the file: it creates what is missing, updates what differs and
adds a schema version where the schema changed (checked against the type's compatibility mode).
Fields left out are left as the registry has them; nothing is deleted. Applying the same file
twice changes nothing the second time. "export" writes the registry's catalog in the same format.

A bridge's secret is read from the environment variable secretFromEnv names, when the bridge is
created or has no secret yet (a secret cannot be read back to compare: rotate it with "herald bridge
secret"); exports never hold one, they name HERALD_BRIDGE_SECRET_<NAME> instead. A bridge keeps
its system, direction, application and sink types: changing them in the file is a plan error that
says to rename the bridge or delete the old one (herald bridge delete).`,
	}
	cmd.PersistentFlags().StringVar(&flags.addr, "registry", "", "registry address, host:port or URL (default $HERALD_REGISTRY_ADDR, else "+config.DefaultRegistryAddr+")")
	cmd.PersistentFlags().StringVar(&flags.key, "key", "", "the operator's key (default $HERALD_ADMIN_KEY)")
	cmd.PersistentFlags().DurationVar(&flags.timeout, "timeout", 2*time.Minute, "give up after this long")
	cmd.AddCommand(catalogApplyCommand(flags), catalogExportCommand(flags))
	return cmd
}

func catalogApplyCommand(flags *registryFlags) *cobra.Command {
	var file string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "apply -f catalog.yaml [--dry-run]",
		Short: "Make the registry's catalog match a catalog file",
		Long: `Reads the file, compares it with the registry and prints the plan: what will be created (+),
updated (~), and each new schema version with the registry's compatibility verdict ("!" and
INCOMPATIBLE with the reasons when the registry would refuse it). Then it applies the plan, unless
--dry-run is given. When a new schema version is incompatible nothing is applied, and the command
fails (with --dry-run too, so that it can guard a change in CI).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("give the catalog file with -f (or -f - for standard input)")
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			return runCatalogApply(ctx, cmd.InOrStdin(), cmd.OutOrStdout(), flags, file, dryRun)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the catalog file (- for standard input)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	return cmd
}

func runCatalogApply(ctx context.Context, stdin io.Reader, out io.Writer, flags *registryFlags, file string, dryRun bool) error {
	in, name := stdin, "<stdin>"
	if file != "-" {
		fh, err := os.Open(file)
		if err != nil {
			return err
		}
		defer fh.Close()
		in, name = fh, file
	}
	desired, err := catalogfile.Parse(name, in)
	if err != nil {
		return fmt.Errorf("the catalog file has problems:\n%w", err)
	}
	client, base, err := flags.client()
	if err != nil {
		return err
	}
	current, err := catalogfile.Fetch(ctx, client)
	if err != nil {
		return fmt.Errorf("read the catalog of %s: %w", base, err)
	}
	plan := catalogfile.NewPlan(current, desired)
	if err := plan.Check(ctx, client); err != nil {
		return err
	}
	fmt.Fprintf(out, "Registry %s, catalog revision %d, file %s:\n\n", base, current.Revision(), name)
	plan.Write(out)
	if bad := plan.Incompatible(); len(bad) > 0 {
		if dryRun {
			fmt.Fprintln(out, "\nDry run: nothing was changed.")
		}
		return &catalogfile.IncompatibleError{Changes: bad}
	}
	if len(plan.Problems) > 0 {
		if dryRun {
			fmt.Fprintln(out, "\nDry run: nothing was changed.")
		}
		return &catalogfile.ProblemsError{Problems: plan.Problems}
	}
	if dryRun {
		fmt.Fprintln(out, "\nDry run: nothing was changed.")
		return nil
	}
	if plan.Empty() {
		return nil
	}
	fmt.Fprintln(out)
	if err := catalogfile.Apply(ctx, client, plan, out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nApplied %d change(s).\n", len(plan.Changes))
	return nil
}

func catalogExportCommand(flags *registryFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "export [-o catalog.yaml]",
		Short: "Write the registry's catalog as a catalog file",
		Long: `Writes every domain, event type (latest schema, examples and settings) and product of the
registry in the catalog file format, to standard output or to the -o file. Applying the exported
file to the same registry changes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			return runCatalogExport(ctx, cmd.OutOrStdout(), flags, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to this file instead of standard output")
	return cmd
}

func runCatalogExport(ctx context.Context, out io.Writer, flags *registryFlags, output string) error {
	client, base, err := flags.client()
	if err != nil {
		return err
	}
	st, err := catalogfile.Fetch(ctx, client)
	if err != nil {
		return fmt.Errorf("read the catalog of %s: %w", base, err)
	}
	b, err := catalogfile.Export(st).Marshal(fmt.Sprintf("Herald catalog of %s at revision %d.\nApply with: herald catalog apply -f FILE", base, st.Revision()))
	if err != nil {
		return err
	}
	if output == "" || output == "-" {
		_, err = out.Write(b)
		return err
	}
	return writeFileAtomic(output, b)
}

// writeFileAtomic replaces path with data, never leaving half a file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
