package metering_test

import (
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/services/metering"
)

func TestConfigFromEnv(t *testing.T) {
	cfg, err := metering.ConfigFromEnv()
	if err != nil || cfg.ClaimIdle != 0 || cfg.ClaimEvery != 0 || cfg.FoldReadEvery != 0 {
		t.Fatalf("unset: %+v, %v (want zeros: New's defaults)", cfg, err)
	}
	t.Setenv("HERALD_METERING_CLAIM_IDLE", "2m")
	t.Setenv("HERALD_METERING_CLAIM_EVERY", "15s")
	t.Setenv("HERALD_METERING_FOLD_READ_EVERY", "1ms")
	if cfg, err = metering.ConfigFromEnv(); err != nil || cfg.ClaimIdle != 2*time.Minute || cfg.ClaimEvery != 15*time.Second ||
		cfg.FoldReadEvery != time.Millisecond {
		t.Fatalf("config: %+v, %v", cfg, err)
	}
	for _, name := range metering.EnvVars {
		for _, bad := range []string{"30", "-5s", "0s", "soon"} {
			t.Run(name+"="+bad, func(t *testing.T) {
				t.Setenv(name, bad)
				if _, err := metering.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), name) {
					t.Errorf("%s=%q: %v", name, bad, err)
				}
			})
		}
	}
	if _, err := metering.New(metering.Config{ClaimIdle: -time.Second}); err == nil {
		t.Error("New accepted a negative claim idle time")
	}
}
