// Command router runs Herald's write path.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/heraldmesh/herald/services/router"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := router.ConfigFromEnv()
	var svc *router.Service
	if err == nil {
		svc, err = router.New(cfg)
	}
	if err == nil {
		err = svc.Run(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "router:", err)
		os.Exit(1)
	}
}
