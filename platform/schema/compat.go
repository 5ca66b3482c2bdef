package schema

import (
	"errors"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// CheckCompatibility tells whether candidate may be added after versions
// (oldest first) under mode. It returns the reasons it may not, each naming
// the property path and the rule broken; none means compatible. An error
// means a schema could not be read.
func CheckCompatibility(mode registryv1.Compatibility, candidate string, versions []string) ([]string, error) {
	return nil, errors.New("schema compatibility checking is not implemented yet")
}
