package config_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/config"
)

func TestUnknownVars(t *testing.T) {
	t.Setenv("HERALD_REDIS_URL", "redis://127.0.0.1:1/0") // common
	t.Setenv("HERALD_REDIS_ULR", "redis://127.0.0.1:1/0") // misspelt common
	t.Setenv("HERALD_METERING_CLAIM_IDLE", "1m")          // known
	t.Setenv("HERALD_METERING_CLAIM_IDEL", "1m")          // misspelt, own prefix
	t.Setenv("HERALD_ROUTER_MAX_BATCH", "5")              // another service's
	t.Setenv("HERALD_ROUTR_MAX_BATCH", "5")               // no service's prefix
	t.Setenv("NOT_HERALD", "x")                           // not ours
	got := config.UnknownVars([]string{"HERALD_METERING_"}, "HERALD_METERING_CLAIM_IDLE")
	want := []string{"HERALD_METERING_CLAIM_IDEL", "HERALD_REDIS_ULR", "HERALD_ROUTR_MAX_BATCH"}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s not reported: %v", w, got)
		}
	}
	for _, n := range []string{"HERALD_REDIS_URL", "HERALD_METERING_CLAIM_IDLE", "HERALD_ROUTER_MAX_BATCH", "NOT_HERALD"} {
		if slices.Contains(got, n) {
			t.Errorf("%s reported: %v", n, got)
		}
	}
}

func TestEnvIntAndDuration(t *testing.T) {
	t.Setenv("HERALD_X_N", "")
	if n, err := config.EnvInt("HERALD_X_N"); n != 0 || err != nil {
		t.Errorf("unset int: %d, %v", n, err)
	}
	t.Setenv("HERALD_X_N", "0")
	if _, err := config.EnvInt("HERALD_X_N"); err == nil {
		t.Error("0 accepted")
	}
	t.Setenv("HERALD_X_D", "90s")
	if d, err := config.EnvDuration("HERALD_X_D"); d.Seconds() != 90 || err != nil {
		t.Errorf("duration: %v, %v", d, err)
	}
	t.Setenv("HERALD_X_D", "90")
	if _, err := config.EnvDuration("HERALD_X_D"); err == nil {
		t.Error("a duration without unit accepted")
	}
}

func TestServerLimitsFromEnv(t *testing.T) {
	t.Setenv("HERALD_ADMIN_KEY", "0123456789abcdef")
	for _, tc := range []struct {
		conns, body string
		wantConns   int
		wantBody    time.Duration
		wantErr     bool
	}{
		{"", "", 0, 0, false},
		{"500", "5s", 500, 5 * time.Second, false},
		{"-1", "none", -1, -1, false},
		{"0", "", 0, 0, true},
		{"many", "", 0, 0, true},
		{"", "0s", 0, 0, true},
		{"", "soon", 0, 0, true},
	} {
		t.Setenv("HERALD_MAX_CONNECTIONS", tc.conns)
		t.Setenv("HERALD_BODY_READ_TIMEOUT", tc.body)
		c := config.FromEnv()
		err := c.Validate()
		if (err != nil) != tc.wantErr {
			t.Errorf("%q %q: err %v, want error %v", tc.conns, tc.body, err, tc.wantErr)
			continue
		}
		if err == nil && (c.MaxConnections != tc.wantConns || c.BodyReadTimeout != tc.wantBody) {
			t.Errorf("%q %q: got %d %v", tc.conns, tc.body, c.MaxConnections, c.BodyReadTimeout)
		}
	}
}

// The public URLs default to the services' addresses and, when set, must
// be absolute http(s) URLs; a refusal names the setting.
func TestPublicURLsFromEnv(t *testing.T) {
	t.Setenv("HERALD_ADMIN_KEY", "0123456789abcdef")
	t.Setenv("HERALD_EDGE_ADDR", "0.0.0.0:7700")
	t.Setenv("HERALD_REGISTRY_ADDR", "127.0.0.1:9702")
	t.Setenv("HERALD_ROUTER_ADDR", ":9701")
	c := config.FromEnv()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.PublicURL != "http://127.0.0.1:7700" || c.RegistryPublicURL != "http://127.0.0.1:9702" ||
		c.RouterPublicURL != "http://127.0.0.1:9701" || c.MeteringPublicURL != "http://127.0.0.1:7703" {
		t.Errorf("defaults: %q %q %q %q", c.PublicURL, c.RegistryPublicURL, c.RouterPublicURL, c.MeteringPublicURL)
	}
	t.Setenv("HERALD_REGISTRY_PUBLIC_URL", "https://catalog.example.com/herald/")
	t.Setenv("HERALD_METERING_PUBLIC_URL", "http://[::1]:9703")
	if c = config.FromEnv(); c.Validate() != nil || c.RegistryPublicURL != "https://catalog.example.com/herald" || c.MeteringPublicURL != "http://[::1]:9703" {
		t.Errorf("set: %q %q, %v", c.RegistryPublicURL, c.MeteringPublicURL, c.Validate())
	}
	for _, name := range []string{"HERALD_PUBLIC_URL", "HERALD_REGISTRY_PUBLIC_URL", "HERALD_ROUTER_PUBLIC_URL", "HERALD_METERING_PUBLIC_URL"} {
		for _, bad := range []string{"events.example.com", "ftp://events.example.com", "https://", "https://:443", "https://u:p@events.example.com",
			"https://events.example.com/?a=b", "https://events.example.com/#x", "http//events.example.com", "https://exa mple.com"} {
			t.Run(name+" "+bad, func(t *testing.T) {
				t.Setenv(name, bad)
				err := config.FromEnv().Validate()
				if err == nil || !strings.Contains(err.Error(), name) {
					t.Errorf("%s=%q: %v", name, bad, err)
				}
			})
		}
	}
	if got := config.UnknownVars([]string{"HERALD_REGISTRY_"}); slices.Contains(got, "HERALD_REGISTRY_PUBLIC_URL") || slices.Contains(got, "HERALD_METERING_PUBLIC_URL") {
		t.Errorf("a public URL reported as unknown: %v", got)
	}
}

// HERALD_SHUTDOWN_DELAY: a duration from 0 to 10 minutes; anything else is
// refused naming it.
func TestShutdownDelayFromEnv(t *testing.T) {
	t.Setenv("HERALD_ADMIN_KEY", "0123456789abcdef")
	for v, want := range map[string]time.Duration{"": 0, "5s": 5 * time.Second, "0s": 0, "10m": 10 * time.Minute} {
		t.Setenv("HERALD_SHUTDOWN_DELAY", v)
		if c := config.FromEnv(); c.Validate() != nil || c.ShutdownDelay != want {
			t.Errorf("%q: %v %v", v, c.ShutdownDelay, c.Validate())
		}
	}
	for _, v := range []string{"-1s", "soon", "11m"} {
		t.Setenv("HERALD_SHUTDOWN_DELAY", v)
		if err := config.FromEnv().Validate(); err == nil || !strings.Contains(err.Error(), "HERALD_SHUTDOWN_DELAY") {
			t.Errorf("%q: %v", v, err)
		}
	}
}
