package edge

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/server"
	"github.com/heraldmesh/herald/platform/service"
)

// The edge's defaults, in one place: New fills unset fields from these.
const (
	DefaultHeartbeat = 15 * time.Second
	// DefaultMaxStreams is the stream ceiling when neither it nor the
	// connection ceiling can be derived (no open-file limit); otherwise
	// the stream ceiling is the connection ceiling (HERALD_MAX_CONNECTIONS
	// or what the file limit leaves: 19,900 under 20,000 files).
	DefaultMaxStreams   = 10000
	DefaultUsageFlush   = 100 * time.Millisecond
	DefaultWriteTimeout = 30 * time.Second
	// DefaultWebhookEndpoints is how many webhook endpoints one edge
	// delivers to at once: each holds a Redis connection while it waits
	// for events.
	DefaultWebhookEndpoints      = 1000
	DefaultWebhookAppConcurrency = 200
	// DefaultBridges is how many sink bridges one edge runs at once.
	DefaultBridges = 100
	// DefaultWebSubSubscriptions is how many WebSub subscriptions one edge
	// delivers to at once (each holds a Redis connection while it waits).
	DefaultWebSubSubscriptions = 1000
	// retryAfter is what a client refused at the stream ceiling is told.
	retryAfter = 5 * time.Second
)

// EnvVars are the variables ConfigFromEnv reads besides the common ones.
var EnvVars = []string{"HERALD_EDGE_HEARTBEAT", "HERALD_EDGE_MAX_STREAMS", "HERALD_EDGE_USAGE_FLUSH", "HERALD_EDGE_WRITE_TIMEOUT",
	"HERALD_EDGE_WEBHOOK_ENDPOINTS", "HERALD_EDGE_WEBHOOK_APP_CONCURRENCY",
	"HERALD_EDGE_BRIDGES", "HERALD_EDGE_BRIDGE_LEASE", "HERALD_EDGE_BRIDGE_ACK_TIMEOUT",
	"HERALD_EDGE_WEBSUB_LEASE", "HERALD_EDGE_WEBSUB_MAX_LEASE", "HERALD_EDGE_WEBSUB_SUBSCRIPTIONS",
	"HERALD_EDGE_STREAM_BUFFER", "HERALD_EDGE_CORS_ORIGINS", "HERALD_EDGE_TLS_CERT", "HERALD_EDGE_TLS_KEY"}

// ConfigFromEnv reads the edge's settings from the environment: the common
// HERALD_* settings and
//
//	HERALD_EDGE_HEARTBEAT      idle interval between SSE heartbeats (Go duration, default 15s)
//	HERALD_EDGE_MAX_STREAMS    open streams of every channel (SSE, StreamEvents, poll) per edge (default: the connection ceiling)
//	HERALD_EDGE_USAGE_FLUSH    the longest a usage record waits before it is appended (Go duration, default 100ms; a part of the second a hard quota on delivered events has to take effect in)
//	HERALD_EDGE_WRITE_TIMEOUT  how long a client may take one write before it is dropped (Go duration, default 30s)
//	HERALD_EDGE_WEBHOOK_ENDPOINTS        webhook endpoints one edge delivers to at once (default 1000; others wait for a free edge)
//	HERALD_EDGE_WEBHOOK_APP_CONCURRENCY  webhook requests in flight per application over all its endpoints (default 200)
//	HERALD_EDGE_BRIDGES                  bridges one edge runs at once (default 100; others wait for a free edge)
//	HERALD_EDGE_BRIDGE_LEASE             how long a bridge's lease outlives an edge that died, before another edge runs it (Go duration, default 10s)
//	HERALD_EDGE_BRIDGE_ACK_TIMEOUT       how long a sink's delivery held by an edge that died waits before another edge sends it again (Go duration, default 60s)
//	HERALD_EDGE_WEBSUB_LEASE             lease of a WebSub subscription that asks for none (Go duration, default 240h)
//	HERALD_EDGE_WEBSUB_MAX_LEASE         longest lease granted (Go duration, default 720h)
//	HERALD_EDGE_WEBSUB_SUBSCRIPTIONS     WebSub subscriptions one edge delivers to at once (default 1000)
//	HERALD_EDGE_STREAM_BUFFER  events queued per SSE/StreamEvents client before it is ended as lagged (default 1024)
//	HERALD_EDGE_CORS_ORIGINS   comma-separated browser origins allowed to read /v1/stream and /v1/poll, with credentials ("*": any)
//	HERALD_EDGE_TLS_CERT, HERALD_EDGE_TLS_KEY  PEM files: serve HTTPS (HTTP/2 for browsers) instead of h2c; both or neither
//
// and, of the common ones, the public URLs GET /apis.json links
// (HERALD_PUBLIC_URL, HERALD_REGISTRY_PUBLIC_URL, HERALD_ROUTER_PUBLIC_URL,
// HERALD_METERING_PUBLIC_URL: absolute http or https URLs).
//
// Unset settings get their defaults; malformed ones are refused with the
// setting's name.
func ConfigFromEnv() (Config, error) {
	cfg := Config{Common: config.FromEnv()}
	var err error
	if cfg.Heartbeat, err = config.EnvDuration("HERALD_EDGE_HEARTBEAT"); err != nil {
		return cfg, err
	}
	maxStreams, err := config.EnvInt("HERALD_EDGE_MAX_STREAMS")
	if err != nil {
		return cfg, err
	}
	cfg.MaxStreams = int64(maxStreams)
	if cfg.UsageFlush, err = config.EnvDuration("HERALD_EDGE_USAGE_FLUSH"); err != nil {
		return cfg, err
	}
	if cfg.WriteTimeout, err = config.EnvDuration("HERALD_EDGE_WRITE_TIMEOUT"); err != nil {
		return cfg, err
	}
	if cfg.WebhookEndpoints, err = config.EnvInt("HERALD_EDGE_WEBHOOK_ENDPOINTS"); err != nil {
		return cfg, err
	}
	if cfg.WebhookAppConcurrency, err = config.EnvInt("HERALD_EDGE_WEBHOOK_APP_CONCURRENCY"); err != nil {
		return cfg, err
	}
	if cfg.Bridges, err = config.EnvInt("HERALD_EDGE_BRIDGES"); err != nil {
		return cfg, err
	}
	if cfg.BridgeLease, err = config.EnvDuration("HERALD_EDGE_BRIDGE_LEASE"); err != nil {
		return cfg, err
	}
	if cfg.BridgeAckTimeout, err = config.EnvDuration("HERALD_EDGE_BRIDGE_ACK_TIMEOUT"); err != nil {
		return cfg, err
	}
	if cfg.WebSubLease, err = config.EnvDuration("HERALD_EDGE_WEBSUB_LEASE"); err != nil {
		return cfg, err
	}
	if cfg.WebSubMaxLease, err = config.EnvDuration("HERALD_EDGE_WEBSUB_MAX_LEASE"); err != nil {
		return cfg, err
	}
	if cfg.WebSubSubscriptions, err = config.EnvInt("HERALD_EDGE_WEBSUB_SUBSCRIPTIONS"); err != nil {
		return cfg, err
	}
	if cfg.StreamBuffer, err = config.EnvInt("HERALD_EDGE_STREAM_BUFFER"); err != nil {
		return cfg, err
	}
	for _, o := range strings.Split(os.Getenv("HERALD_EDGE_CORS_ORIGINS"), ",") {
		if o = strings.TrimSpace(o); o != "" {
			cfg.CORSOrigins = append(cfg.CORSOrigins, o)
		}
	}
	cfg.TLSCert, cfg.TLSKey = os.Getenv("HERALD_EDGE_TLS_CERT"), os.Getenv("HERALD_EDGE_TLS_KEY")
	cfg.setDefaults()
	// The public URLs (common settings) are the links of /apis.json.
	if _, err := discoveryLinks(cfg); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// setDefaults fills every unset field with its default.
func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = c.EdgeAddr
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = int64(server.Ceiling(c.MaxConnections))
		if c.MaxStreams <= 0 {
			c.MaxStreams = DefaultMaxStreams
		}
	}
	if c.UsageFlush <= 0 {
		c.UsageFlush = DefaultUsageFlush
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.WebhookEndpoints <= 0 {
		c.WebhookEndpoints = DefaultWebhookEndpoints
	}
	if c.Bridges <= 0 {
		c.Bridges = DefaultBridges
	}
	if c.WebhookAppConcurrency <= 0 {
		c.WebhookAppConcurrency = DefaultWebhookAppConcurrency
	}
	if c.WebSubSubscriptions <= 0 {
		c.WebSubSubscriptions = DefaultWebSubSubscriptions
	}
}

// RunFromEnv runs an edge configured by ConfigFromEnv until ctx ends, as
// the edge binary does.
func RunFromEnv(ctx context.Context) error {
	return service.RunFromEnv(ctx, ConfigFromEnv, New)
}
