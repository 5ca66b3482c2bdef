package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/spf13/cobra"
)

func triggerCommand() *cobra.Command {
	flags := &edgeFlags{}
	var dataFile, registryAddr string
	var to []string
	cmd := &cobra.Command{
		Use:   "trigger <type>",
		Short: "Send a test event of a type to your own subscriptions (webhook endpoints and streams)",
		Long: `Sends a test event of <type> to your application's subscriptions only (all that cover the
type, or those given with --to), through the same delivery path as any event: signed,
retried, recorded as attempts, replayable by its cursor ("herald webhooks replay"). It
carries the attribute heraldtest=true and is never billed. The data is the type's first
example unless --data names a JSON file ("-" reads standard input); it is validated
against the type's schema. A subscription whose filter drops the event is reported and
gets nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			typ := args[0]
			if err := eventtype.ValidateName(typ); err != nil {
				return fmt.Errorf("type: %w", err)
			}
			var data []byte
			switch dataFile {
			case "":
			case "-":
				b, err := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
				if err != nil {
					return fmt.Errorf("--data -: %w", err)
				}
				data = b
			default:
				b, err := os.ReadFile(dataFile)
				if err != nil {
					return fmt.Errorf("--data: %w", err)
				}
				data = b
			}
			base, client, key, err := flags.resolve()
			if err != nil {
				return err
			}
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			targets := to
			if len(targets) == 0 {
				addr := registryAddr
				if addr == "" {
					addr = config.FromEnv().RegistryAddr
				}
				reg, _ := registryClient(addr, key)
				res, err := reg.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))
				if err != nil {
					return fmt.Errorf("list your subscriptions: %w (check --registry or HERALD_REGISTRY_ADDR, and --key)", err)
				}
				for _, s := range res.Msg.GetSubscriptions() {
					if slices.ContainsFunc(s.GetTypes(), func(p string) bool { return access.Covers(p, typ) }) {
						targets = append(targets, s.GetId())
					}
				}
				if len(targets) == 0 {
					return fmt.Errorf("none of your subscriptions covers %s: subscribe first, or name one with --to", typ)
				}
			}
			wh := edgev1connect.NewWebhookServiceClient(client, base, rpc.ClientOptions(key)...)
			out := cmd.OutOrStdout()
			failed := 0
			for _, id := range targets {
				res, err := wh.SendTestEvent(ctx, connect.NewRequest(&edgev1.SendTestEventRequest{SubscriptionId: id, Type: typ, Data: string(data)}))
				if err != nil {
					fmt.Fprintf(out, "%s: %v\n", id, edgeError("trigger", err))
					failed++
					continue
				}
				if res.Msg.GetFilteredOut() {
					fmt.Fprintf(out, "%s: filtered out by the subscription's filter; nothing sent\n", id)
					continue
				}
				fmt.Fprintf(out, "%s: sent test event %s, cursor %s\n", id, res.Msg.GetEvent().GetId(), res.Msg.GetCursor())
			}
			if failed > 0 {
				return errors.New(plural(failed, "subscription") + " refused the test event")
			}
			return nil
		},
	}
	flags.register(cmd, 30*time.Second)
	cmd.Flags().StringVar(&dataFile, "data", "", "a file with the event data as JSON (\"-\": standard input); default the type's first example")
	cmd.Flags().StringSliceVar(&to, "to", nil, "subscription ids to send to (default: every subscription of yours that covers the type)")
	cmd.Flags().StringVar(&registryAddr, "registry", "", "registry address, to find your subscriptions (default $HERALD_REGISTRY_ADDR, else "+config.DefaultRegistryAddr+")")
	return cmd
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
