package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// bridgeFlags are the connection flags of `herald bridge`: bridges live in
// the registry's catalog and run on the edge.
type bridgeFlags struct {
	registry, edge, key string
	timeout             time.Duration
}

func (f *bridgeFlags) register(cmd *cobra.Command) {
	fs := cmd.PersistentFlags()
	fs.StringVar(&f.registry, "registry", "", "registry address, host:port or URL (default $HERALD_REGISTRY_ADDR, else "+config.DefaultRegistryAddr+")")
	fs.StringVar(&f.edge, "edge", "", "edge address, host:port or URL (default $HERALD_EDGE_ADDR, else "+config.DefaultEdgeAddr+")")
	fs.StringVar(&f.key, "key", "", "the operator's key (default $HERALD_ADMIN_KEY, else an application's $HERALD_KEY, which sees its own bridges)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
}

// resolveKey is --key, else the operator's key, else an application's:
// changing bridges is the operator's, reading them an application's too.
func (f *bridgeFlags) resolveKey() (string, error) {
	for _, k := range []string{f.key, os.Getenv("HERALD_ADMIN_KEY"), os.Getenv("HERALD_KEY")} {
		if k != "" {
			return k, nil
		}
	}
	return "", errors.New("no key: give the operator's key with --key or HERALD_ADMIN_KEY (an application's key, HERALD_KEY, sees its own bridges)")
}

func (f *bridgeFlags) clients() (registryv1connect.RegistryServiceClient, edgev1connect.BridgeServiceClient, error) {
	key, err := f.resolveKey()
	if err != nil {
		return nil, nil, err
	}
	env := config.FromEnv()
	regAddr := f.registry
	if regAddr == "" {
		regAddr = env.RegistryAddr
	}
	reg, _ := registryClient(regAddr, key)
	edgeAddr := f.edge
	if edgeAddr == "" {
		edgeAddr = env.EdgeAddr
	}
	base, client := serviceURL(edgeAddr)
	return reg, edgev1connect.NewBridgeServiceClient(client, base, rpc.ClientOptions(key)...), nil
}

// serviceURL is the base URL of addr (host:port, or an http(s) URL) and the
// HTTP client to reach it.
func serviceURL(addr string) (string, *http.Client) {
	if strings.Contains(addr, "://") {
		if strings.HasPrefix(addr, "https://") {
			return strings.TrimSuffix(addr, "/"), &http.Client{}
		}
		return strings.TrimSuffix(addr, "/"), rpc.HTTPClient()
	}
	return rpc.BaseURL(addr), rpc.HTTPClient() // h2c, as Herald services speak
}

func (f *bridgeFlags) context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	return ctx, func() { cancel(); stop() }
}

var (
	bridgeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	bridgeIDRE   = regexp.MustCompile(`^brg_[A-Za-z0-9_-]{1,64}$`)
)

// checkBridgeArg refuses what cannot be a bridge's name or id, before
// asking anyone.
func checkBridgeArg(s string) error {
	if bridgeNameRE.MatchString(s) || bridgeIDRE.MatchString(s) {
		return nil
	}
	return fmt.Errorf("%q is not a bridge name (1-63 lower-case letters, digits and '-') nor a bridge id (brg_...)", s)
}

// bridgeRegistryError says which call failed, with the registry's reason.
func bridgeRegistryError(what, bridge string, err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeNotFound:
		if bridge != "" {
			return fmt.Errorf("%s: no bridge %q (see herald bridge list)", what, bridge)
		}
	case connect.CodeUnavailable:
		return fmt.Errorf("%s: the registry is unreachable or not ready (%w); check --registry or HERALD_REGISTRY_ADDR", what, err)
	case connect.CodeUnauthenticated:
		return fmt.Errorf("%s: the registry refused the key (%w); check --key or HERALD_ADMIN_KEY", what, err)
	case connect.CodePermissionDenied:
		return fmt.Errorf("%s: %w (changing bridges needs the operator's key: --key or HERALD_ADMIN_KEY)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// bridgeEdgeError is edgeError for BridgeService.
func bridgeEdgeError(what, bridge string, err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeNotFound:
		if bridge != "" {
			return fmt.Errorf("%s: the edge knows no bridge %q (see herald bridge list; a new bridge reaches the edge within seconds)", what, bridge)
		}
	case connect.CodeUnimplemented:
		return fmt.Errorf("%s: this edge does not serve bridges (%w); is it older than this herald?", what, err)
	case connect.CodePermissionDenied:
		return fmt.Errorf("%s: %w (this needs the operator's key: --key or HERALD_ADMIN_KEY)", what, err)
	}
	return edgeError(what, err)
}

func bridgeCommand() *cobra.Command {
	flags := &bridgeFlags{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "bridge",
		Aliases: []string{"bridges"},
		Short:   "Bridges to Kafka, AMQP, MQTT and data lakes: status, dead letters, replay, enable, disable, delete",
		Long: `Bridges are catalog resources (create and change them with "herald catalog apply", whose
bridges: section says how) that the edge runs. "herald bridge" alone lists them with how they go:

  NAME       the bridge
  SYSTEM     kafka, amqp, mqtt or lake
  DIRECTION  sink (mesh to system) or source (system to mesh)
  RUNNING    yes when an edge holds the bridge's lease and runs it; disabled; - when no edge
             has heard of it yet
  LAG        a sink's events not yet delivered; a source's records not yet published
             (? when the system cannot tell)
  DEAD       dead letters kept
  ERROR      the last error, if the bridge is failing

The registry and the edge are called with the operator's key (HERALD_ADMIN_KEY); an application's
key (HERALD_KEY) sees its own bridges, and only the operator changes them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBridgeList(cmd, flags, asJSON) },
	}
	flags.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the statuses as JSON (protojson)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the bridges with how they go (the default)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runBridgeList(cmd, flags, asJSON) },
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print the statuses as JSON (protojson)")
	cmd.AddCommand(list, bridgeGetCommand(flags), bridgeDeadCommand(flags), bridgeReplayCommand(flags),
		bridgeDeleteCommand(flags), bridgeEnableCommand(flags, true), bridgeEnableCommand(flags, false),
		bridgeSecretCommand(flags))
	return cmd
}

func systemName(b *registryv1.Bridge) string {
	if s := catalog.BridgeSystem(b); s != "" {
		return s
	}
	return "-"
}

func directionText(d registryv1.BridgeDirection) string {
	switch d {
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK:
		return "sink"
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE:
		return "source"
	}
	return "-"
}

func runBridgeList(cmd *cobra.Command, flags *bridgeFlags, asJSON bool) error {
	reg, edge, err := flags.clients()
	if err != nil {
		return err
	}
	ctx, cancel := flags.context(cmd.Context())
	defer cancel()
	res, err := reg.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))
	if err != nil {
		return bridgeRegistryError("list bridges", "", err)
	}
	bridges := res.Msg.GetBridges()
	out := cmd.OutOrStdout()
	statuses := map[string]*edgev1.BridgeStatus{}
	st := &edgev1.ListBridgeStatusResponse{}
	var edgeErr error
	if len(bridges) > 0 {
		res, err := edge.ListBridgeStatus(ctx, connect.NewRequest(&edgev1.ListBridgeStatusRequest{}))
		if err != nil {
			edgeErr = bridgeEdgeError("the bridges' status", "", err)
		} else {
			st = res.Msg
		}
	}
	if asJSON {
		if edgeErr != nil {
			return edgeErr
		}
		return printJSON(out, st)
	}
	for _, s := range st.GetStatuses() {
		statuses[s.GetBridgeId()] = s
	}
	if len(bridges) == 0 {
		fmt.Fprintln(out, "No bridges. Add them in a catalog file's bridges: section (herald catalog apply --help).")
		return nil
	}
	writeBridges(out, bridges, statuses)
	if edgeErr != nil {
		return fmt.Errorf("%w\n(the table shows the registry's bridges without their status)", edgeErr)
	}
	return nil
}

// writeBridges prints the list table: the registry's bridges, with the
// edge's status where it has one.
func writeBridges(out io.Writer, bridges []*registryv1.Bridge, statuses map[string]*edgev1.BridgeStatus) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSYSTEM\tDIRECTION\tRUNNING\tLAG\tDEAD\tERROR")
	for _, b := range bridges {
		running, lag, dead, lastErr := "-", "-", "-", "-"
		if st, ok := statuses[b.GetId()]; ok {
			running = map[bool]string{true: "yes", false: "no"}[st.GetRunning()]
			lag = "?"
			if st.GetLag() >= 0 {
				lag = fmt.Sprint(st.GetLag())
			}
			dead = fmt.Sprint(st.GetDeadLetters())
			lastErr = oneLine(st.GetLastError())
		}
		if b.GetDisabled() {
			running = "disabled"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.GetName(), systemName(b), directionText(b.GetDirection()), running, lag, dead, lastErr)
	}
	tw.Flush()
}

func bridgeGetCommand(flags *bridgeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "get <name>",
		Short: "Print one bridge as JSON (its secret never: only whether it has one)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := getBridge(cmd, flags, args[0])
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), b)
		},
	}
}

func getBridge(cmd *cobra.Command, flags *bridgeFlags, name string) (*registryv1.Bridge, error) {
	if err := checkBridgeArg(name); err != nil {
		return nil, err
	}
	reg, _, err := flags.clients()
	if err != nil {
		return nil, err
	}
	ctx, cancel := flags.context(cmd.Context())
	defer cancel()
	res, err := reg.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: name}))
	if err != nil {
		return nil, bridgeRegistryError("get bridge "+name, name, err)
	}
	return res.Msg.GetBridge(), nil
}

func bridgeDeadCommand(flags *bridgeFlags) *cobra.Command {
	var pageToken string
	var pageSize int32
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "dead <name>",
		Aliases: []string{"dead-letters", "dlq"},
		Short:   "List what a bridge gave up on, oldest first",
		Long: `Lists a bridge's dead letters, oldest first: a sink's events the far side kept refusing
(with their cursor and attempts; send them again with "herald bridge replay <name>
--failed-since TIME"), a source's records the mesh refused (where they were in the far side and
why). --json prints them whole, with the event and a source's raw payload.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkBridgeArg(args[0]); err != nil {
				return err
			}
			_, edge, err := flags.clients()
			if err != nil {
				return err
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			res, err := edge.ListBridgeDeadLetters(ctx, connect.NewRequest(&edgev1.ListBridgeDeadLettersRequest{
				Bridge: args[0], PageSize: pageSize, PageToken: pageToken,
			}))
			if err != nil {
				return bridgeEdgeError("list dead letters of "+args[0], args[0], err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, res.Msg)
			}
			dls := res.Msg.GetDeadLetters()
			if len(dls) == 0 && res.Msg.GetNextPageToken() == "" {
				fmt.Fprintf(out, "No dead letters for %s.\n", args[0])
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tID\tWHERE\tEVENT\tTYPE\tATTEMPTS\tREASON")
			for _, d := range dls {
				where := d.GetCursor()
				if where == "" {
					where = d.GetPosition()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", formatTime(d.GetTime()), d.GetId(), oneLine(where),
					oneLine(d.GetEvent().GetId()), oneLine(d.GetEvent().GetType()), d.GetAttempts(), oneLine(d.GetReason()))
			}
			tw.Flush()
			fmt.Fprintf(out, "\n%d shown, %d in all.\n", len(dls), res.Msg.GetTotal())
			morePages(out, res.Msg.GetNextPageToken())
			return nil
		},
	}
	cmd.Flags().Int32Var(&pageSize, "page-size", 0, "at most this many (default 100, at most 1000)")
	cmd.Flags().StringVar(&pageToken, "page-token", "", "the next page, as printed at the end of the previous one")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the response as JSON (protojson)")
	return cmd
}

func bridgeReplayCommand(flags *bridgeFlags) *cobra.Command {
	var failedSince, after, to string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "replay <name> (--failed-since TIME | --after CURSOR [--to CURSOR])",
		Short: "Queue a sink's events for delivery again (operator key)",
		Long: `Queues a sink bridge's events for delivery again. Give exactly one of:

  --failed-since TIME   every dead letter made at or after TIME (RFC 3339, e.g. 2026-12-01T00:00:00Z)
  --after CURSOR        a range of the log: every event of the sink's types (and filter) after
                        CURSOR ("0": from the start of the retained log); --to CURSOR ends it
                        (inclusive; default now)

A cursor is a stream id like 1764669600000-0. A source has nothing to replay: its far side
keeps its records.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkBridgeArg(args[0]); err != nil {
				return err
			}
			req, err := bridgeReplayRequest(args[0], failedSince, after, to)
			if err != nil {
				return err
			}
			_, edge, err := flags.clients()
			if err != nil {
				return err
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			res, err := edge.ReplayBridge(ctx, connect.NewRequest(req))
			if err != nil {
				return bridgeEdgeError("replay to "+args[0], args[0], err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return printJSON(out, res.Msg)
			}
			fmt.Fprintf(out, "Queued %d event(s) for delivery to %s.\n", res.Msg.GetQueued(), args[0])
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&failedSince, "failed-since", "", "replay every dead letter made at or after this time (RFC 3339)")
	f.StringVar(&after, "after", "", "replay the log's events after this cursor (\"0\": from the start)")
	f.StringVar(&to, "to", "", "end of the --after range: a cursor (inclusive); default now")
	f.BoolVar(&asJSON, "json", false, "print the response as JSON (protojson)")
	return cmd
}

// bridgeReplayRequest builds the ReplayBridge request from the flags,
// refusing combinations the edge would.
func bridgeReplayRequest(bridge, failedSince, after, to string) (*edgev1.ReplayBridgeRequest, error) {
	if (failedSince == "") == (after == "") {
		return nil, errors.New("say what to replay with exactly one of --failed-since TIME or --after CURSOR")
	}
	if to != "" && after == "" {
		return nil, errors.New("--to ends an --after range: give --after too")
	}
	req := &edgev1.ReplayBridgeRequest{Bridge: bridge}
	if failedSince != "" {
		t, err := time.Parse(time.RFC3339Nano, failedSince)
		if err != nil {
			return nil, fmt.Errorf("--failed-since %q: give a time in RFC 3339, such as 2026-12-01T00:00:00Z", failedSince)
		}
		req.Selection = &edgev1.ReplayBridgeRequest_FailedSince{FailedSince: timestamppb.New(t)}
		return req, nil
	}
	if _, err := eventlog.ParseID(after); err != nil {
		return nil, fmt.Errorf("--after: %w", err)
	}
	r := &edgev1.LogRange{From: &edgev1.LogRange_AfterCursor{AfterCursor: after}}
	if to != "" {
		if _, err := eventlog.ParseID(to); err != nil {
			return nil, fmt.Errorf("--to: %w", err)
		}
		r.To = &edgev1.LogRange_ToCursor{ToCursor: to}
	}
	req.Selection = &edgev1.ReplayBridgeRequest_Range{Range: r}
	return req, nil
}

func bridgeDeleteCommand(flags *bridgeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "delete <name>",
		Short: "Delete a bridge (operator key); a source's publishing key is revoked with it",
		Long: `Deletes the bridge from the catalog: the edge stops it. A sink's undelivered events and
dead letters go with it; a source's publishing key is revoked. A catalog file that still lists
the bridge creates it again on the next apply.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkBridgeArg(args[0]); err != nil {
				return err
			}
			reg, _, err := flags.clients()
			if err != nil {
				return err
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			if _, err := reg.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: args[0]})); err != nil {
				return bridgeRegistryError("delete bridge "+args[0], args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted bridge %s.\n", args[0])
			return nil
		},
	}
}

func bridgeEnableCommand(flags *bridgeFlags, enable bool) *cobra.Command {
	verb, short := "disable", "Stop a bridge (operator key); a sink's events wait in the log meanwhile"
	if enable {
		verb, short = "enable", "Start a disabled bridge again (operator key)"
	}
	return &cobra.Command{
		Use:   verb + " <name>",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := getBridge(cmd, flags, args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if b.GetDisabled() == !enable {
				fmt.Fprintf(out, "Bridge %s is already %sd.\n", args[0], verb)
				return nil
			}
			if err := updateBridge(cmd, flags, &registryv1.Bridge{Id: b.GetId(), Disabled: !enable}, "disabled"); err != nil {
				return bridgeRegistryError(verb+" bridge "+args[0], args[0], err)
			}
			fmt.Fprintf(out, "Bridge %s is %sd.\n", args[0], verb)
			return nil
		},
	}
}

func updateBridge(cmd *cobra.Command, flags *bridgeFlags, b *registryv1.Bridge, mask ...string) error {
	reg, _, err := flags.clients()
	if err != nil {
		return err
	}
	ctx, cancel := flags.context(cmd.Context())
	defer cancel()
	_, err = reg.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{Bridge: b, UpdateMask: mask}))
	return err
}

func bridgeSecretCommand(flags *bridgeFlags) *cobra.Command {
	var fromEnv string
	cmd := &cobra.Command{
		Use:   "secret <name> --from-env VAR",
		Short: "Set or rotate a bridge's secret from an environment variable (operator key)",
		Long: `Sets the bridge's connection secret (the Kafka SASL password, the AMQP or MQTT password, or
the S3 secret access key) to the value of the environment variable VAR. The registry stores it
sealed and never returns it; the edge reconnects with it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if fromEnv == "" {
				return errors.New("give the environment variable that holds the secret with --from-env VAR")
			}
			secret := os.Getenv(fromEnv)
			if secret == "" {
				return fmt.Errorf("--from-env %s: the environment variable is not set (or empty)", fromEnv)
			}
			b, err := getBridge(cmd, flags, args[0])
			if err != nil {
				return err
			}
			if err := updateBridge(cmd, flags, &registryv1.Bridge{Id: b.GetId(), Secret: secret}, "secret"); err != nil {
				return bridgeRegistryError("set the secret of bridge "+args[0], args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "The secret of bridge %s is set.\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&fromEnv, "from-env", "", "the environment variable that holds the secret")
	return cmd
}
