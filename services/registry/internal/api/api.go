// Package api implements the RegistryService handlers: it validates requests,
// calls the store, and maps outcomes to Connect codes.
package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/schema"
	"github.com/heraldmesh/herald/services/registry/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	maxDescription = 4096
	maxAppName     = 200
	defaultPage    = 100
	maxPage        = 1000
)

// Handler serves RegistryService.
type Handler struct {
	registryv1connect.UnimplementedRegistryServiceHandler
	store *store.Store
}

// New returns a Handler.
func New(s *store.Store) *Handler { return &Handler{store: s} }

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

func internal(err error) error { return connect.NewError(connect.CodeInternal, err) }

// CreateEventType implements RegistryService.
func (h *Handler) CreateEventType(ctx context.Context, req *connect.Request[registryv1.CreateEventTypeRequest]) (*connect.Response[registryv1.CreateEventTypeResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetEventType()
	if in == nil {
		return nil, invalid("event_type is required")
	}
	if err := eventtype.ValidateName(in.GetName()); err != nil {
		return nil, invalid("event_type.name: %v", err)
	}
	if len(in.GetDescription()) > maxDescription || !utf8.ValidString(in.GetDescription()) {
		return nil, invalid("event_type.description must be valid UTF-8 of at most %d bytes", maxDescription)
	}
	if in.GetSchema() == "" {
		return nil, invalid("event_type.schema is required: a JSON Schema (draft 2020-12) of the event data, as JSON text ({} accepts any JSON)")
	}
	if _, err := schema.Compile(in.GetName(), in.GetSchema()); err != nil {
		return nil, invalid("event_type.schema: %v", err)
	}
	if _, err := h.store.GetEventType(ctx, in.GetName()); err == nil {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("event type %s already exists", in.GetName()))
	}
	rev, err := h.store.NextRevision(ctx)
	if err != nil {
		return nil, internal(err)
	}
	now := timestamppb.Now()
	et := &registryv1.EventType{
		Name: in.GetName(), Description: in.GetDescription(), Schema: in.GetSchema(),
		CreateTime: now, UpdateTime: now, Revision: rev,
	}
	switch err := h.store.CreateEventType(ctx, et); {
	case errors.Is(err, store.ErrExists):
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("event type %s already exists", in.GetName()))
	case err != nil:
		return nil, internal(err)
	}
	return connect.NewResponse(&registryv1.CreateEventTypeResponse{EventType: et}), nil
}

// GetEventType implements RegistryService.
func (h *Handler) GetEventType(ctx context.Context, req *connect.Request[registryv1.GetEventTypeRequest]) (*connect.Response[registryv1.GetEventTypeResponse], error) {
	if err := eventtype.ValidateName(req.Msg.GetName()); err != nil {
		return nil, invalid("name: %v", err)
	}
	et, err := h.store.GetEventType(ctx, req.Msg.GetName())
	if errors.Is(err, store.ErrNotFound) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("event type %s is not registered", req.Msg.GetName()))
	}
	if err != nil {
		return nil, internal(err)
	}
	return connect.NewResponse(&registryv1.GetEventTypeResponse{EventType: et}), nil
}

// ListEventTypes implements RegistryService.
func (h *Handler) ListEventTypes(ctx context.Context, req *connect.Request[registryv1.ListEventTypesRequest]) (*connect.Response[registryv1.ListEventTypesResponse], error) {
	size := int(req.Msg.GetPageSize())
	switch {
	case size < 0:
		return nil, invalid("page_size must not be negative")
	case size == 0:
		size = defaultPage
	case size > maxPage:
		size = maxPage
	}
	after := ""
	if tok := req.Msg.GetPageToken(); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || !strings.HasPrefix(string(b), "after:") {
			return nil, invalid("page_token is not one this service issued")
		}
		after = strings.TrimPrefix(string(b), "after:")
	}
	types, more, err := h.store.ListEventTypes(ctx, after, size)
	if err != nil {
		return nil, internal(err)
	}
	res := &registryv1.ListEventTypesResponse{EventTypes: types}
	if more {
		res.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte("after:" + types[len(types)-1].GetName()))
	}
	return connect.NewResponse(res), nil
}

// CreateApplication implements RegistryService.
func (h *Handler) CreateApplication(ctx context.Context, req *connect.Request[registryv1.CreateApplicationRequest]) (*connect.Response[registryv1.CreateApplicationResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetApplication()
	name := strings.TrimSpace(in.GetName())
	if name == "" {
		return nil, invalid("application.name is required")
	}
	if len(name) > maxAppName || !utf8.ValidString(name) {
		return nil, invalid("application.name must be valid UTF-8 of at most %d bytes", maxAppName)
	}
	now := timestamppb.Now()
	app := &registryv1.Application{Id: auth.NewID("app_"), Name: name, CreateTime: now}
	secret := auth.NewSecret()
	key := &registryv1.Key{Id: auth.NewID("key_"), Secret: secret, ApplicationId: app.GetId(), Prefix: secret[:10], CreateTime: now}
	if _, err := h.store.NextRevision(ctx); err != nil {
		return nil, internal(err)
	}
	if err := h.store.CreateApplication(ctx, app, key, auth.HashSecret(secret)); err != nil {
		return nil, internal(err)
	}
	return connect.NewResponse(&registryv1.CreateApplicationResponse{Application: app, Key: key}), nil
}

// GetApplication implements RegistryService. Applications see themselves;
// the operator sees every one.
func (h *Handler) GetApplication(ctx context.Context, req *connect.Request[registryv1.GetApplicationRequest]) (*connect.Response[registryv1.GetApplicationResponse], error) {
	p, _ := auth.FromContext(ctx)
	if !p.Admin && p.ApplicationID != req.Msg.GetId() {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("an application key can only read its own application"))
	}
	app, err := h.store.GetApplication(ctx, req.Msg.GetId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("application %q does not exist", req.Msg.GetId()))
	}
	if err != nil {
		return nil, internal(err)
	}
	return connect.NewResponse(&registryv1.GetApplicationResponse{Application: app}), nil
}

// AuthenticateKey implements RegistryService.
func (h *Handler) AuthenticateKey(ctx context.Context, req *connect.Request[registryv1.AuthenticateKeyRequest]) (*connect.Response[registryv1.AuthenticateKeyResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	if len(req.Msg.GetKeyHash()) != 64 {
		return nil, invalid("key_hash must be the lower-case hex SHA-256 of the secret")
	}
	k, err := h.store.KeyByHash(ctx, req.Msg.GetKeyHash())
	if errors.Is(err, store.ErrNotFound) {
		return nil, connect.NewError(connect.CodeNotFound, auth.ErrUnknownKey)
	}
	if err != nil {
		return nil, internal(err)
	}
	return connect.NewResponse(&registryv1.AuthenticateKeyResponse{Key: k}), nil
}

// Resolver checks keys against the local store, for the registry's own
// routes.
func (h *Handler) Resolver() auth.Resolver {
	return auth.ResolverFunc(func(ctx context.Context, keyHash string) (auth.Principal, error) {
		k, err := h.store.KeyByHash(ctx, keyHash)
		if errors.Is(err, store.ErrNotFound) {
			return auth.Principal{}, auth.ErrUnknownKey
		}
		if err != nil {
			return auth.Principal{}, err
		}
		return auth.Principal{ApplicationID: k.GetApplicationId(), KeyID: k.GetId()}, nil
	})
}
