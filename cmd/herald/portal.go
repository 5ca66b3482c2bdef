package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
)

func portalCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "portal",
		Short: "The consumer portal: mint sign-in links for applications",
	}
	var registry string
	var linkTTL, sessionTTL time.Duration
	link := &cobra.Command{
		Use:   "link <application-id>",
		Short: "Mint a single-use sign-in link to the consumer portal for one application (operator key)",
		Long: `Prints a link to the consumer portal that signs its first visitor in as the application,
for --session-ttl. The link works once, until --link-ttl; its token is in the URL fragment,
so it stays out of server logs. Needs the operator's key (HERALD_ADMIN_KEY).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key := os.Getenv("HERALD_ADMIN_KEY")
			if key == "" {
				return errors.New("minting portal links needs the operator's key: set HERALD_ADMIN_KEY")
			}
			addr := registry
			if addr == "" {
				addr = config.FromEnv().RegistryAddr
			}
			reg, _ := registryClient(addr, key)
			req := &registryv1.CreatePortalLinkRequest{ApplicationId: args[0]}
			if linkTTL > 0 {
				req.LinkTtl = durationpb.New(linkTTL)
			}
			if sessionTTL > 0 {
				req.SessionTtl = durationpb.New(sessionTTL)
			}
			res, err := reg.CreatePortalLink(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("mint a portal link for %s: %w", args[0], err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Msg.GetUrl())
			fmt.Fprintf(cmd.ErrOrStderr(), "works once, until %s\n", res.Msg.GetExpireTime().AsTime().UTC().Format(time.RFC3339))
			return nil
		},
	}
	link.Flags().StringVar(&registry, "registry", "", "registry address (default $HERALD_REGISTRY_ADDR, else "+config.DefaultRegistryAddr+")")
	link.Flags().DurationVar(&linkTTL, "link-ttl", 0, "how long the link can be opened (1m to 24h; default 15m)")
	link.Flags().DurationVar(&sessionTTL, "session-ttl", 0, "how long the session it opens lasts (5m to 12h; default 1h)")
	cmd.AddCommand(link)
	return cmd
}
