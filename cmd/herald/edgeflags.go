package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/spf13/cobra"
)

// edgeFlags are the connection flags of the verbs that talk to the edge as
// a consumer: listen and webhooks.
type edgeFlags struct {
	addr, key string
	timeout   time.Duration
}

// register adds --edge and --key (and --timeout when timeout is set) to
// cmd.
func (f *edgeFlags) register(cmd *cobra.Command, timeout time.Duration) {
	fs := cmd.PersistentFlags()
	fs.StringVar(&f.addr, "edge", "", "edge address, host:port or URL (default $HERALD_EDGE_ADDR, else "+config.DefaultEdgeAddr+")")
	fs.StringVar(&f.key, "key", "", "your application's key (default $HERALD_KEY, else the operator's $HERALD_ADMIN_KEY)")
	if timeout > 0 {
		fs.DurationVar(&f.timeout, "timeout", timeout, "give up after this long")
	}
}

// resolve returns the edge's base URL, the HTTP client to reach it and the
// key: the flags first, then the environment.
func (f *edgeFlags) resolve() (base string, client *http.Client, key string, err error) {
	addr := f.addr
	if addr == "" {
		addr = config.FromEnv().EdgeAddr
	}
	key = f.key
	if key == "" {
		key = os.Getenv("HERALD_KEY")
	}
	if key == "" {
		key = os.Getenv("HERALD_ADMIN_KEY")
	}
	if key == "" {
		return "", nil, "", errors.New("no key: give your application's key with --key or HERALD_KEY (or the operator's, HERALD_ADMIN_KEY)")
	}
	client = rpc.HTTPClient() // h2c, as Herald services speak
	if strings.Contains(addr, "://") {
		base = strings.TrimSuffix(addr, "/")
		if strings.HasPrefix(addr, "https://") {
			client = &http.Client{}
		}
	} else {
		base = rpc.BaseURL(addr)
	}
	return base, client, key, nil
}

// webhooks returns a WebhookService client of the edge.
func (f *edgeFlags) webhooks() (edgev1connect.WebhookServiceClient, error) {
	base, client, key, err := f.resolve()
	if err != nil {
		return nil, err
	}
	return edgev1connect.NewWebhookServiceClient(client, base, rpc.ClientOptions(key)...), nil
}

// context ends on Ctrl-C, SIGTERM or the timeout.
func (f *edgeFlags) context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	if f.timeout <= 0 {
		return ctx, stop
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	return ctx, func() { cancel(); stop() }
}
