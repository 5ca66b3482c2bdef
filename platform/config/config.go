// Package config reads the settings every Herald service shares, from
// HERALD_* environment variables with defaults, and opens Redis.
package config

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Default listen addresses; each is also how the others find the service.
const (
	DefaultEdgeAddr     = "127.0.0.1:7700"
	DefaultRouterAddr   = "127.0.0.1:7701"
	DefaultRegistryAddr = "127.0.0.1:7702"
	DefaultMeteringAddr = "127.0.0.1:7703"
	DefaultRedisURL     = "redis://127.0.0.1:7779/0"
)

// Common are the settings every service reads.
type Common struct {
	RedisURL     string // HERALD_REDIS_URL
	AdminKey     string // HERALD_ADMIN_KEY
	EdgeAddr     string // HERALD_EDGE_ADDR
	RouterAddr   string // HERALD_ROUTER_ADDR
	RegistryAddr string // HERALD_REGISTRY_ADDR
	MeteringAddr string // HERALD_METERING_ADDR

	// MaxConnections is the listener's connection ceiling
	// (HERALD_MAX_CONNECTIONS); 0 derives it from RLIMIT_NOFILE, negative
	// disables it. See platform/server.
	MaxConnections int
	// BodyReadTimeout bounds reading a request body
	// (HERALD_BODY_READ_TIMEOUT); 0 means 30s, negative none.
	BodyReadTimeout time.Duration
	// ShutdownDelay is how long a stopping service keeps serving while
	// /readyz answers 503, so that a load balancer takes it out of rotation
	// before its listener closes (HERALD_SHUTDOWN_DELAY); 0: none.
	ShutdownDelay time.Duration

	// SecretKey seals secrets at rest, such as webhook signing secrets
	// (HERALD_SECRET_KEY): base64 of 32 random bytes, comma-separated to
	// rotate (the first seals, all open). See platform/secretbox.
	SecretKey string
	// WebhookAllow is the allowlist of outbound webhook destinations that
	// are otherwise refused (HERALD_WEBHOOK_ALLOW): comma-separated CIDR
	// prefixes, addresses or host names, which may also use plain http.
	// See platform/safehttp.
	WebhookAllow string
	// PublicURL is the edge's address as consumers reach it
	// (HERALD_PUBLIC_URL), for the links Herald hands out, such as an
	// endpoint's JWKS URL; default http://<EdgeAddr>.
	PublicURL string
	// RegistryPublicURL, RouterPublicURL and MeteringPublicURL are those
	// services as clients outside the mesh reach them
	// (HERALD_REGISTRY_PUBLIC_URL, HERALD_ROUTER_PUBLIC_URL,
	// HERALD_METERING_PUBLIC_URL), for the links the edge's /apis.json
	// hands out; default http://<their addr>.
	RegistryPublicURL, RouterPublicURL, MeteringPublicURL string

	// envErr is why a variable FromEnv read was refused; Validate reports it.
	envErr error
}

// FromEnv reads Common from the environment, with defaults.
// An invalid value is reported by Validate.
func FromEnv() Common {
	c := Common{
		RedisURL:     Env("HERALD_REDIS_URL", DefaultRedisURL),
		AdminKey:     os.Getenv("HERALD_ADMIN_KEY"),
		EdgeAddr:     Env("HERALD_EDGE_ADDR", DefaultEdgeAddr),
		RouterAddr:   Env("HERALD_ROUTER_ADDR", DefaultRouterAddr),
		RegistryAddr: Env("HERALD_REGISTRY_ADDR", DefaultRegistryAddr),
		MeteringAddr: Env("HERALD_METERING_ADDR", DefaultMeteringAddr),
		SecretKey:    os.Getenv("HERALD_SECRET_KEY"),
		WebhookAllow: os.Getenv("HERALD_WEBHOOK_ALLOW"),
	}
	var errs []error
	for _, u := range []struct {
		name, addr string
		dst        *string
	}{
		{"HERALD_PUBLIC_URL", c.EdgeAddr, &c.PublicURL},
		{"HERALD_REGISTRY_PUBLIC_URL", c.RegistryAddr, &c.RegistryPublicURL},
		{"HERALD_ROUTER_PUBLIC_URL", c.RouterAddr, &c.RouterPublicURL},
		{"HERALD_METERING_PUBLIC_URL", c.MeteringAddr, &c.MeteringPublicURL},
	} {
		*u.dst = AddrURL(u.addr)
		if v := os.Getenv(u.name); v != "" {
			var err error
			if *u.dst, err = CheckPublicURL(u.name, v); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if v := os.Getenv("HERALD_MAX_CONNECTIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n == 0 {
			errs = append(errs, fmt.Errorf("HERALD_MAX_CONNECTIONS %q: give a whole number of connections (or -1 for no ceiling); unset derives it from the open-file limit", v))
		}
		c.MaxConnections = n
	}
	if v := os.Getenv("HERALD_BODY_READ_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if v == "none" {
			d, err = -1, nil
		} else if err == nil && d <= 0 {
			err = errors.New("not positive")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("HERALD_BODY_READ_TIMEOUT %q: give a positive duration such as 30s, or none", v))
		}
		c.BodyReadTimeout = d
	}
	if v := os.Getenv("HERALD_SHUTDOWN_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > 10*time.Minute {
			errs = append(errs, fmt.Errorf("HERALD_SHUTDOWN_DELAY %q: give a duration from 0s to 10m, such as 5s", v))
		}
		c.ShutdownDelay = d
	}
	c.envErr = errors.Join(errs...)
	return c
}

// Env returns the variable's value, or def when it is unset or empty.
func Env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// CheckPublicURL checks the value v of the setting name, a public base URL: an
// absolute http or https URL with a host, perhaps a path (behind a
// proxy), and no query, fragment or user information. It returns v without
// a trailing slash, so that paths can be appended.
func CheckPublicURL(name, v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" ||
		u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Opaque != "" {
		return strings.TrimSuffix(v, "/"), fmt.Errorf("%s %q: give an absolute http or https URL such as https://herald.example.com (a path may follow; no query, fragment or user)", name, v)
	}
	return strings.TrimSuffix(v, "/"), nil
}

// AddrURL is the http URL of a listen address, as a client on this host
// reaches it: an unspecified host (":7700", "0.0.0.0:7700", "[::]:7700")
// becomes 127.0.0.1. It is the default of the *_PUBLIC_URL settings.
func AddrURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Validate checks what every service needs.
func (c Common) Validate() error {
	if c.envErr != nil {
		return c.envErr
	}
	if c.AdminKey == "" {
		return errors.New("HERALD_ADMIN_KEY is not set: every route needs a key, and this is the operator's (at least 16 characters)")
	}
	if len(c.AdminKey) < 16 {
		return errors.New("HERALD_ADMIN_KEY must be at least 16 characters")
	}
	if c.RedisURL == "" {
		return errors.New("HERALD_REDIS_URL is not set")
	}
	return nil
}

// OpenRedis parses HERALD_REDIS_URL and returns a client. It does not wait
// for Redis: readiness checks and retries do.
//
// redis://[user:password@]host:port/db (or rediss://) is one server.
// redis+cluster://[user:password@]host:port[,host:port...] (or
// rediss+cluster://) is a Redis Cluster, reached through any of the listed
// nodes (the rest of the topology is discovered, and followed through
// MOVED, ASK and failovers); its query takes go-redis' cluster options
// (e.g. ?dial_timeout=3s). poolSize bounds the connections per node.
func OpenRedis(url string, poolSize int) (redis.UniversalClient, error) {
	if IsClusterURL(url) {
		opt, err := ParseClusterURL(url)
		if err != nil {
			return nil, err
		}
		if poolSize > 0 {
			opt.PoolSize = poolSize
		}
		opt.ReadTimeout = 5 * time.Second
		opt.WriteTimeout = 5 * time.Second
		// go-redis reloads the topology at once on MOVED and ASK, but a dead
		// master answers neither: without a short interval it would keep
		// dialing it for up to a minute after its replica took over.
		if opt.ClusterStateReloadInterval == 0 {
			opt.ClusterStateReloadInterval = time.Second
		}
		return redis.NewClusterClient(opt), nil
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("HERALD_REDIS_URL %q: %s", redactURL(url), redactErr(err, url))
	}
	if poolSize > 0 {
		opt.PoolSize = poolSize
	}
	opt.ReadTimeout = 5 * time.Second
	opt.WriteTimeout = 5 * time.Second
	return redis.NewClient(opt), nil
}

// IsClusterURL reports whether a HERALD_REDIS_URL names a Redis Cluster
// (redis+cluster:// or rediss+cluster://).
func IsClusterURL(url string) bool {
	return strings.HasPrefix(url, "redis+cluster://") || strings.HasPrefix(url, "rediss+cluster://")
}

// ParseClusterURL parses redis+cluster://[user:password@]host:port[,host:port...][?options]
// into go-redis cluster options.
func ParseClusterURL(raw string) (*redis.ClusterOptions, error) {
	scheme, rest, _ := strings.Cut(raw, "+cluster://")
	bad := func(why string) error {
		return fmt.Errorf("HERALD_REDIS_URL %q: %s (want redis+cluster://[user:password@]host:port[,host:port...])", redactURL(raw), why)
	}
	hostsPart, query, _ := strings.Cut(rest, "?")
	userinfo := ""
	if at := strings.LastIndex(hostsPart, "@"); at >= 0 {
		userinfo, hostsPart = hostsPart[:at+1], hostsPart[at+1:]
	}
	if i := strings.Index(hostsPart, "/"); i >= 0 {
		if db := strings.Trim(hostsPart[i:], "/"); db != "" && db != "0" {
			return nil, bad("a cluster has only database 0")
		}
		hostsPart = hostsPart[:i]
	}
	var hosts []string
	for _, h := range strings.Split(hostsPart, ",") {
		if h = strings.TrimSpace(h); h != "" {
			if _, port, err := net.SplitHostPort(h); err != nil || port == "" {
				return nil, bad(fmt.Sprintf("%q is not host:port", h))
			}
			hosts = append(hosts, h)
		}
	}
	if len(hosts) == 0 {
		return nil, bad("no node address")
	}
	u := scheme + "://" + userinfo + hosts[0]
	q := query
	for _, h := range hosts[1:] {
		if q != "" {
			q += "&"
		}
		q += "addr=" + h
	}
	if q != "" {
		u += "?" + q
	}
	opt, err := redis.ParseClusterURL(u)
	if err != nil {
		return nil, bad(redactErr(err, u))
	}
	return opt, nil
}

// redactErr is err's message with the URL it quotes (net/url's errors do)
// redacted.
func redactErr(err error, raw string) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		// "parse <the URL, quoted>: <why>": only why.
		return ue.Err.Error()
	}
	return strings.ReplaceAll(err.Error(), raw, redactURL(raw))
}

// redactURL hides a URL's password in error messages.
func redactURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		user, _, _ := strings.Cut(rest[:at], ":")
		return scheme + "://" + user + ":xxxxx@" + rest[at+1:]
	}
	return raw
}

// PingRedis is a readiness check.
func PingRedis(rdb redis.Cmdable) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := rdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		return nil
	}
}

// EnvInt reads a whole number of at least 1; unset or empty is 0, which
// leaves the service's default.
func EnvInt(name string) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s %q: give a whole number of at least 1", name, v)
	}
	return n, nil
}

// EnvDuration reads a positive Go duration; unset or empty is 0, which
// leaves the service's default.
func EnvDuration(name string) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q: give a positive duration such as 30s or 5m", name, v)
	}
	return d, nil
}

// commonVars are the variables Common reads, and the two settings of the
// Redis deployment that only the router reads (set beside
// HERALD_REDIS_URL, they warn no other service).
var commonVars = []string{
	"HERALD_REDIS_URL", "HERALD_REDIS_REPLICA_ACKS", "HERALD_REDIS_REPLICA_TIMEOUT", "HERALD_ADMIN_KEY", "HERALD_EDGE_ADDR", "HERALD_ROUTER_ADDR", "HERALD_REGISTRY_ADDR", "HERALD_METERING_ADDR",
	"HERALD_MAX_CONNECTIONS", "HERALD_BODY_READ_TIMEOUT", "HERALD_SHUTDOWN_DELAY", "HERALD_SECRET_KEY", "HERALD_WEBHOOK_ALLOW", "HERALD_PUBLIC_URL",
	"HERALD_REGISTRY_PUBLIC_URL", "HERALD_ROUTER_PUBLIC_URL", "HERALD_METERING_PUBLIC_URL",
}

// servicePrefixes are the prefixes of each service's own variables.
var servicePrefixes = []string{"HERALD_EDGE_", "HERALD_ROUTER_", "HERALD_REGISTRY_", "HERALD_METERING_"}

// UnknownVars returns the HERALD_* variables set in the environment that no
// service reads, sorted. Common's variables and known are read; a variable
// under another service's HERALD_<SERVICE>_ prefix is left to that service,
// unless its prefix is in own. A service logs them at start, so that a
// misspelt setting does not go unnoticed.
func UnknownVars(own []string, known ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "HERALD_") || slices.Contains(commonVars, name) || slices.Contains(known, name) {
			continue
		}
		other := false
		for _, p := range servicePrefixes {
			if strings.HasPrefix(name, p) && !slices.Contains(own, p) {
				other = true
			}
		}
		if !other {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// WarnUnknownVars logs each of UnknownVars(own, known...) as a warning
// (nil log: JSON to stderr, as the services log).
func WarnUnknownVars(log *slog.Logger, own []string, known ...string) {
	if log == nil {
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	for _, name := range UnknownVars(own, known...) {
		log.Warn("ignoring an unknown HERALD_* variable: is it misspelt?", "variable", name)
	}
}
