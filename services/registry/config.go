package registry

import (
	"context"
	"os"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/service"
)

// EnvVars are the variables ConfigFromEnv reads besides the common ones.
var EnvVars = []string{"HERALD_REGISTRY_CHANGE_LOG_ENTRIES", "HERALD_REGISTRY_WEBHOOK_ORIGIN", "HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER"}

// ConfigFromEnv reads the registry's settings from the environment: the
// common HERALD_* settings and
//
//	HERALD_REGISTRY_CHANGE_LOG_ENTRIES  about how many catalog changes Watch streams can resume from (default 100000)
//	HERALD_REGISTRY_WEBHOOK_ORIGIN      the WebHook-Request-Origin of endpoint validation (default the host of HERALD_PUBLIC_URL)
//	HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER  the shortest disable_after of an endpoint (default 1m; tests lower it)
//
// Unset variables leave New's defaults.
func ConfigFromEnv() (Config, error) {
	cfg := Config{Common: config.FromEnv(), WebhookOrigin: os.Getenv("HERALD_REGISTRY_WEBHOOK_ORIGIN")}
	var err error
	if cfg.ChangeLogEntries, err = config.EnvInt("HERALD_REGISTRY_CHANGE_LOG_ENTRIES"); err != nil {
		return cfg, err
	}
	if cfg.WebhookMinDisableAfter, err = config.EnvDuration("HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER"); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// RunFromEnv runs a registry configured by ConfigFromEnv until ctx ends, as
// the registry binary does.
func RunFromEnv(ctx context.Context) error {
	return service.RunFromEnv(ctx, ConfigFromEnv, New)
}
