package api

import (
	"context"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/services/registry/internal/store"
)

func validProduct(p *registryv1.Product) error {
	if err := validProductName("product.name", p.GetName()); err != nil {
		return err
	}
	if err := text("product.description", p.GetDescription(), maxDescription); err != nil {
		return err
	}
	return validPatterns("product.event_types", p.GetEventTypes(), maxProductTypes)
}

// CreateProduct implements RegistryService.
func (h *Handler) CreateProduct(ctx context.Context, req *connect.Request[registryv1.CreateProductRequest]) (*connect.Response[registryv1.CreateProductResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetProduct()
	if in == nil {
		return nil, invalid("product is required")
	}
	if err := validProduct(in); err != nil {
		return nil, err
	}
	p, err := h.store.CreateProduct(ctx, &registryv1.Product{Name: in.GetName(), Description: in.GetDescription(), EventTypes: in.GetEventTypes()})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.CreateProductResponse{Product: p}), nil
}

// visibleProducts filters products to those offering at least one type
// the caller may see (all of them for the operator and INTERNAL
// applications).
func (h *Handler) visibleProducts(ctx context.Context, c caller, ps []*registryv1.Product) ([]*registryv1.Product, error) {
	if c.seesAll() {
		return ps, nil
	}
	types, err := h.visibleTypes(ctx, c)
	if err != nil {
		return nil, err
	}
	out := ps[:0]
	for _, p := range ps {
		for _, et := range types {
			if eventtype.MatchAny(p.GetEventTypes(), et.GetName()) {
				out = append(out, p)
				break
			}
		}
	}
	return out, nil
}

// GetProduct implements RegistryService.
func (h *Handler) GetProduct(ctx context.Context, req *connect.Request[registryv1.GetProductRequest]) (*connect.Response[registryv1.GetProductResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	if err := validProductName("name", req.Msg.GetName()); err != nil {
		return nil, err
	}
	p, err := h.store.GetProduct(ctx, req.Msg.GetName())
	if err != nil {
		return nil, fail(err)
	}
	visible, err := h.visibleProducts(ctx, c, []*registryv1.Product{p})
	if err != nil {
		return nil, err
	}
	if len(visible) == 0 {
		return nil, fail(&store.NotFoundError{Kind: "product", Name: p.GetName()})
	}
	return connect.NewResponse(&registryv1.GetProductResponse{Product: p}), nil
}

// ListProducts implements RegistryService.
func (h *Handler) ListProducts(ctx context.Context, _ *connect.Request[registryv1.ListProductsRequest]) (*connect.Response[registryv1.ListProductsResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	ps, err := h.store.ListProducts(ctx)
	if err != nil {
		return nil, fail(err)
	}
	if ps, err = h.visibleProducts(ctx, c, ps); err != nil {
		return nil, err
	}
	return connect.NewResponse(&registryv1.ListProductsResponse{Products: ps}), nil
}

// UpdateProduct implements RegistryService.
func (h *Handler) UpdateProduct(ctx context.Context, req *connect.Request[registryv1.UpdateProductRequest]) (*connect.Response[registryv1.UpdateProductResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetProduct()
	if in == nil {
		return nil, invalid("product is required")
	}
	if err := validProduct(in); err != nil {
		return nil, err
	}
	p, err := h.store.UpdateProduct(ctx, in.GetName(), in.GetRevision(), func(p *registryv1.Product) error {
		p.Description, p.EventTypes = in.GetDescription(), in.GetEventTypes()
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.UpdateProductResponse{Product: p}), nil
}
