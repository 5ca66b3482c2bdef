// Command metering runs Herald's metering service, configured by HERALD_*
// environment variables (see metering.ConfigFromEnv).
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	config.WarnUnknownVars(nil, []string{"HERALD_METERING_"}, metering.EnvVars...)
	if err := metering.RunFromEnv(ctx); err != nil {
		stop()
		fmt.Fprintln(os.Stderr, "metering:", err)
		os.Exit(1)
	}
}
