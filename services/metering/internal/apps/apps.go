// Package apps answers what metering's handlers ask the registry about
// applications and tenants, uncached: they check subjects before writing
// quotas and invoices, and scope what an application key may read.
package apps

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
)

// Lookup asks a registry client authenticated with the admin key.
type Lookup struct {
	Registry registryv1connect.RegistryServiceClient
}

// TenantOf returns the tenant of an application ("" for none), and whether
// the registry knows the application.
func (l Lookup) TenantOf(ctx context.Context, app string) (string, bool, error) {
	res, err := l.Registry.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app}))
	switch connect.CodeOf(err) {
	case connect.CodeNotFound, connect.CodeInvalidArgument:
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("look up application %s: %w", app, err)
	}
	return res.Msg.GetApplication().GetTenant(), true, nil
}

// TenantExists reports whether any application belongs to tenant.
func (l Lookup) TenantExists(ctx context.Context, tenant string) (bool, error) {
	res, err := l.Registry.ListApplications(ctx, connect.NewRequest(&registryv1.ListApplicationsRequest{Tenant: tenant}))
	if err != nil {
		return false, fmt.Errorf("list applications of tenant %s: %w", tenant, err)
	}
	return len(res.Msg.GetApplications()) > 0, nil
}
