// Command registry runs Herald's catalog service, configured by HERALD_*
// environment variables (see registry.ConfigFromEnv).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/services/registry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	config.WarnUnknownVars(nil, []string{"HERALD_REGISTRY_"}, registry.EnvVars...)
	if err := registry.RunFromEnv(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}
