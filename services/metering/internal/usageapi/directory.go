package usageapi

import (
	"context"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/services/metering/internal/analytics"
)

// DirectoryTTL is how long the directory trusts what it read from the
// registry: an application's tenant, the product list.
const DirectoryTTL = 30 * time.Second

// Directory answers, from the registry, the tenant of an application and
// the catalog's products, each cached for DirectoryTTL.
type Directory struct {
	client registryv1connect.RegistryServiceClient
	now    func() time.Time

	mu         sync.Mutex
	tenants    map[string]cached[string]
	products   cached[[]analytics.Product]
	productsOK bool
}

type cached[T any] struct {
	v  T
	at time.Time
}

// NewDirectory returns a Directory over a registry client authenticated
// with the admin key.
func NewDirectory(client registryv1connect.RegistryServiceClient) *Directory {
	return &Directory{client: client, now: time.Now, tenants: map[string]cached[string]{}}
}

// TenantOf returns the tenant of an application ("" for none, or for an
// application the registry does not know).
func (d *Directory) TenantOf(ctx context.Context, app string) (string, error) {
	now := d.now()
	d.mu.Lock()
	c, ok := d.tenants[app]
	d.mu.Unlock()
	if ok && now.Sub(c.at) < DirectoryTTL {
		return c.v, nil
	}
	res, err := d.client.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app}))
	tenant := ""
	switch {
	case connect.CodeOf(err) == connect.CodeNotFound:
	case err != nil:
		return "", fmt.Errorf("look up application %s in the registry: %w", app, err)
	default:
		tenant = res.Msg.GetApplication().GetTenant()
	}
	d.mu.Lock()
	if len(d.tenants) > 10_000 {
		clear(d.tenants)
	}
	d.tenants[app] = cached[string]{tenant, now}
	d.mu.Unlock()
	return tenant, nil
}

// Products returns the catalog's products.
func (d *Directory) Products(ctx context.Context) ([]analytics.Product, error) {
	now := d.now()
	d.mu.Lock()
	c, ok := d.products, d.productsOK
	d.mu.Unlock()
	if ok && now.Sub(c.at) < DirectoryTTL {
		return c.v, nil
	}
	res, err := d.client.ListProducts(ctx, connect.NewRequest(&registryv1.ListProductsRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list products in the registry: %w", err)
	}
	ps := make([]analytics.Product, 0, len(res.Msg.GetProducts()))
	for _, p := range res.Msg.GetProducts() {
		ps = append(ps, analytics.Product{Name: p.GetName(), Patterns: p.GetEventTypes()})
	}
	d.mu.Lock()
	d.products, d.productsOK = cached[[]analytics.Product]{ps, now}, true
	d.mu.Unlock()
	return ps, nil
}
