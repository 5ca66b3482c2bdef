package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/cmd/herald/internal/devredis"
	"github.com/heraldmesh/herald/cmd/herald/internal/mesh"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/metering"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/heraldmesh/herald/services/router"
	"github.com/spf13/cobra"
)

func devCommand() *cobra.Command {
	var varDir string
	var redisPort int
	var seed, cluster bool
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole mesh in the foreground: Redis (unless HERALD_REDIS_URL is set) and the four services",
		Long: `Runs registry, router, metering and edge in this process, on the addresses in
HERALD_{REGISTRY,ROUTER,METERING,EDGE}_ADDR (defaults 127.0.0.1:7702, :7701, :7703, :7700).

Unless HERALD_REDIS_URL is set, it starts its own redis-server on 127.0.0.1:7779 with
its data under ./var (AOF with appendfsync always: an acknowledged publish is on disk).
Unless HERALD_ADMIN_KEY is set, it generates an admin key once, keeps it in
./var/admin.key, and prints it. Ctrl-C stops everything cleanly.

With --cluster it starts a local Redis Cluster instead: three masters and
three replicas (one per master) on the six ports after --redis-port
(127.0.0.1:7780-7785 by default), each node's data under ./var/cluster/node-N
(AOF, appendfsync always), and runs the services against
redis+cluster://127.0.0.1:7780,... A restart finds the same cluster in the
nodes' nodes.conf and reuses it, with its data.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.Context(), cmd.OutOrStdout(), varDir, redisPort, seed, cluster)
		},
	}
	cmd.Flags().StringVar(&varDir, "var", "var", "directory for Redis data and the generated admin key")
	cmd.Flags().IntVar(&redisPort, "redis-port", 7779, "port of the Redis that dev starts (when HERALD_REDIS_URL is unset)")
	cmd.Flags().BoolVar(&seed, "seed", true, "register a small demo catalog")
	cmd.Flags().BoolVar(&cluster, "cluster", false, "start a local Redis Cluster (3 masters, 3 replicas, on the 6 ports after --redis-port) instead of one redis-server")
	return cmd
}

func runDev(parent context.Context, out io.Writer, varDir string, redisPort int, seed, cluster bool) error {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	common := config.FromEnv()
	if cluster && os.Getenv("HERALD_REDIS_URL") != "" {
		return errors.New("--cluster starts a Redis Cluster of its own: unset HERALD_REDIS_URL (or point it at your cluster, redis+cluster://host:port,..., without --cluster)")
	}
	if err := os.MkdirAll(varDir, 0o700); err != nil {
		return err
	}
	if common.AdminKey == "" {
		key, err := adminKey(filepath.Join(varDir, "admin.key"))
		if err != nil {
			return err
		}
		common.AdminKey = key
	}
	if common.SecretKey == "" {
		// Webhook secrets are sealed at rest with this key: keep it with
		// the admin key, so that a restart opens what was sealed before.
		key, err := secretKey(filepath.Join(varDir, "secret.key"))
		if err != nil {
			return err
		}
		common.SecretKey = key
	}
	if common.WebhookAllow == "" {
		// On a developer's machine, webhooks go to local receivers.
		common.WebhookAllow = "127.0.0.0/8,::1/128,localhost"
	}
	switch {
	case cluster:
		dir, err := filepath.Abs(filepath.Join(varDir, "cluster"))
		if err != nil {
			return err
		}
		c, err := devredis.StartCluster(ctx, dir, redisPort, out)
		if err != nil {
			return fmt.Errorf("start redis cluster: %w", err)
		}
		// The cluster stops last, after the services have flushed.
		defer c.Stop()
		common.RedisURL = c.URL()
		printCluster(ctx, out, c, dir)
	case os.Getenv("HERALD_REDIS_URL") == "":
		dir, err := filepath.Abs(filepath.Join(varDir, "redis"))
		if err != nil {
			return err
		}
		srv, err := devredis.Start(ctx, dir, redisPort, out)
		if err != nil {
			return fmt.Errorf("start redis: %w", err)
		}
		// Redis stops last, after the services have flushed.
		defer srv.Stop()
		common.RedisURL = srv.URL()
		fmt.Fprintf(out, "herald: redis-server on %s, data in %s (AOF, appendfsync always)\n", srv.Addr(), dir)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	config.WarnUnknownVars(log, []string{"HERALD_REGISTRY_", "HERALD_METERING_", "HERALD_ROUTER_", "HERALD_EDGE_"}, slices.Concat(registry.EnvVars, metering.EnvVars, router.EnvVars, edge.EnvVars)...)
	m, err := mesh.New(common, log)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	if seed {
		if err := seedCatalog(ctx, m.Common); err != nil {
			stop()
			<-done
			return fmt.Errorf("seed demo catalog: %w", err)
		}
	}
	printBanner(out, m.Common)
	err = <-done
	if err == nil {
		fmt.Fprintln(out, "herald: stopped")
	}
	return err
}

// adminKey reads the key kept in path, or creates one there.
func adminKey(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		return strings.TrimSpace(string(b)), nil
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	key := "hadm_" + base64.RawURLEncoding.EncodeToString(b)
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keep admin key: %w", err)
	}
	return key, nil
}

// secretKey reads the key kept at path, or makes one and keeps it.
func secretKey(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	key := secretbox.NewKey()
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keep secret key: %w", err)
	}
	return key, nil
}

var demoTypes = []*registryv1.EventType{
	{
		Name:        "billing.invoice.paid",
		Description: "An invoice was paid in full.",
		Schema: `{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object",
"required":["invoice_id","amount","currency"],
"properties":{"invoice_id":{"type":"string"},"amount":{"type":"integer","minimum":0},"currency":{"type":"string","pattern":"^[A-Z]{3}$"}}}`,
	},
	{
		Name:        "billing.invoice.created",
		Description: "An invoice was issued.",
		Schema:      `{"type":"object","required":["invoice_id"],"properties":{"invoice_id":{"type":"string"},"amount":{"type":"integer"}}}`,
	},
	{
		Name:        "identity.user.created",
		Description: "A user signed up.",
		Schema:      `{"type":"object","required":["user_id","email"],"properties":{"user_id":{"type":"string"},"email":{"type":"string"}}}`,
	},
}

func seedCatalog(ctx context.Context, c config.Common) error {
	client := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(c.RegistryAddr), rpc.ClientOptions(c.AdminKey)...)
	for _, et := range demoTypes {
		for attempt := 0; ; attempt++ {
			_, err := client.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et}))
			if err == nil || connect.CodeOf(err) == connect.CodeAlreadyExists {
				break
			}
			if connect.CodeOf(err) != connect.CodeUnavailable || attempt > 100 {
				return err
			}
			select {
			case <-ctx.Done():
				return errors.New("interrupted")
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func printBanner(out io.Writer, c config.Common) {
	fmt.Fprintf(out, `
Herald is running. Ctrl-C stops it.

  edge      %[1]s   SSE: %[1]s/v1/stream?types=billing.*
            console: %[1]s/   consumer portal: %[1]s/portal/ (sign in: herald portal link <application-id>)
  router    %[2]s   gRPC: herald.router.v1.RouterService/Publish
  registry  %[3]s   gRPC: herald.registry.v1.RegistryService
  metering  %[4]s   REST: %[4]s/v1/usage   OpenAPI: %[4]s/openapi.json   dashboard: %[4]s/dashboard

  admin key: %[5]s
  export HERALD_ADMIN_KEY=%[5]s

Demo event types: billing.invoice.paid, billing.invoice.created, identity.user.created
`, rpc.BaseURL(c.EdgeAddr), rpc.BaseURL(c.RouterAddr), rpc.BaseURL(c.RegistryAddr), rpc.BaseURL(c.MeteringAddr), c.AdminKey)
}

// printCluster says what `herald dev --cluster` started: each node, its role
// and its master's slots.
func printCluster(ctx context.Context, out io.Writer, c *redisserver.Cluster, dir string) {
	how := "created"
	if c.Reused {
		how = "reused (found in the nodes' nodes.conf)"
	}
	fmt.Fprintf(out, "herald: Redis Cluster of %d nodes, %s; data in %s/node-N (AOF, appendfsync always)\n", len(c.Nodes), how, dir)
	rdb := c.Client()
	defer rdb.Close()
	nodes, err := rdb.ClusterNodes(ctx).Result()
	if err != nil {
		fmt.Fprintf(out, "  (cluster nodes: %v)\n", err)
	}
	// CLUSTER NODES: <id> <ip:port@cport> <flags> <master id or -> ... <slots>...
	addrOf, line := map[string]string{}, map[string][]string{}
	for l := range strings.SplitSeq(strings.TrimSpace(nodes), "\n") {
		f := strings.Fields(l)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		addrOf[f[0]], line[addr] = addr, f
	}
	for i, s := range c.Nodes {
		f := line[s.Addr()]
		switch {
		case f == nil:
			fmt.Fprintf(out, "  node-%d %s\n", i, s.Addr())
		case strings.Contains(f[2], "master"):
			fmt.Fprintf(out, "  node-%d %s  master, slots %s\n", i, s.Addr(), strings.Join(f[8:], ","))
		default:
			fmt.Fprintf(out, "  node-%d %s  replica of %s\n", i, s.Addr(), addrOf[f[3]])
		}
	}
	fmt.Fprintf(out, "  HERALD_REDIS_URL=%s\n", c.URL())
}
