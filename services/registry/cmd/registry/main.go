// Command registry runs Herald's catalog service.
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
	svc, err := registry.New(registry.Config{Common: config.FromEnv()})
	if err == nil {
		err = svc.Run(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "registry:", err)
		os.Exit(1)
	}
}
