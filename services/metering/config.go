package metering

import (
	"context"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/service"
)

// EnvVars are the variables ConfigFromEnv reads besides the common ones.
var EnvVars = []string{"HERALD_METERING_CLAIM_IDLE", "HERALD_METERING_CLAIM_EVERY", "HERALD_METERING_FOLD_READ_EVERY"}

// ConfigFromEnv reads metering's settings from the environment: the common
// HERALD_* settings and
//
//	HERALD_METERING_CLAIM_IDLE   how long a record stays pending with another metering process before it is taken over (Go duration, default 30s)
//	HERALD_METERING_CLAIM_EVERY  how often pending records are scanned for takeover (Go duration, default 10s)
//	HERALD_METERING_FOLD_READ_EVERY  the shortest time between two reads of the usage stream by one fold worker (Go duration, default none)
//
// Unset variables leave New's defaults.
func ConfigFromEnv() (Config, error) {
	cfg := Config{Common: config.FromEnv()}
	var err error
	if cfg.ClaimIdle, err = config.EnvDuration("HERALD_METERING_CLAIM_IDLE"); err != nil {
		return cfg, err
	}
	if cfg.ClaimEvery, err = config.EnvDuration("HERALD_METERING_CLAIM_EVERY"); err != nil {
		return cfg, err
	}
	if cfg.FoldReadEvery, err = config.EnvDuration("HERALD_METERING_FOLD_READ_EVERY"); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// RunFromEnv runs a metering service configured by ConfigFromEnv until ctx
// ends, as the metering binary does.
func RunFromEnv(ctx context.Context) error {
	return service.RunFromEnv(ctx, ConfigFromEnv, New)
}
