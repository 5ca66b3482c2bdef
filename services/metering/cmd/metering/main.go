// Command metering runs Herald's metering service, configured by HERALD_*
// environment variables (see platform/config).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/services/metering"
)

func main() {
	svc, err := metering.New(metering.Config{Common: config.FromEnv()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := svc.Run(ctx); err != nil {
		stop()
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
