// Command edge runs Herald's delivery edge (SSE and HTTP/2 streams).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/services/edge"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	config.WarnUnknownVars(nil, []string{"HERALD_EDGE_"}, edge.EnvVars...)
	if err := edge.RunFromEnv(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "edge:", err)
		os.Exit(1)
	}
}
