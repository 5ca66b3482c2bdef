// Package api implements the RegistryService handlers: it authorizes and
// validates requests, calls the store, and maps outcomes to Connect codes.
// The rules of the catalog (what a name looks like, which changes are
// allowed, who may see what) live here; the store only keeps what it is
// given, atomically.
package api

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/schema"
	"github.com/heraldmesh/herald/services/registry/internal/store"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const (
	maxDescription = 4096
	maxShortText   = 200
	defaultPage    = 100
	maxPage        = 1000
)

// Handler serves RegistryService.
type Handler struct {
	registryv1connect.UnimplementedRegistryServiceHandler
	store    *store.Store
	streams  context.Context
	webhooks Webhooks

	// checkCompatibility is schema.CheckCompatibility, replaced in tests.
	checkCompatibility func(registryv1.Compatibility, string, []string) ([]string, error)
}

// New returns a Handler over a store. Watch streams end when shutdown ends
// (the server's stream context).
func New(s *store.Store, shutdown context.Context) *Handler {
	return &Handler{store: s, streams: shutdown, checkCompatibility: schema.CheckCompatibility}
}

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

func failedPrecondition(format string, args ...any) error {
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(format, args...))
}

func denied(format string, args ...any) error {
	return connect.NewError(connect.CodePermissionDenied, fmt.Errorf(format, args...))
}

func notFound(format string, args ...any) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf(format, args...))
}

// fail maps an error of the store (or of a check run inside a store
// transaction, already a Connect error) to a Connect error; server faults
// pass through unchanged (see the default case).
func fail(err error) error {
	var ce *connect.Error
	var conflict *store.ConflictError
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.Is(err, store.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, store.ErrExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.As(err, &conflict), errors.Is(err, store.ErrBusy):
		return connect.NewError(connect.CodeAborted, err)
	default:
		// A server fault (Redis unreachable, a record that does not
		// decode): returned as it is, for the service's error rule
		// (service.ErrorInterceptor) to answer UNAVAILABLE or INTERNAL
		// with a generic message and log the detail. Its text names
		// Redis keys and key hashes, so it never goes to the client.
		return err
	}
}

// caller is who is calling, and what it may see.
type caller struct {
	admin    bool
	appID    string
	audience registryv1.Audience
}

// sees reports whether the caller may see a type of the visibility.
func (c caller) sees(v registryv1.Visibility) bool { return c.admin || access.Visible(c.audience, v) }

// seesAll reports whether the caller sees the whole catalog: the operator
// and INTERNAL applications (unset audience is INTERNAL).
func (c caller) seesAll() bool {
	return c.admin || c.audience == registryv1.Audience_AUDIENCE_UNSPECIFIED || c.audience == registryv1.Audience_AUDIENCE_INTERNAL
}

// reader returns the caller of a catalog read: the operator, or an
// application with its audience.
func (h *Handler) reader(ctx context.Context) (caller, error) {
	p, ok := auth.FromContext(ctx)
	switch {
	case ok && p.Admin:
		return caller{admin: true}, nil
	case !ok || p.ApplicationID == "":
		return caller{}, connect.NewError(connect.CodeUnauthenticated, errors.New("missing key"))
	}
	app, err := h.store.GetApplication(ctx, p.ApplicationID)
	if errors.Is(err, store.ErrNotFound) {
		return caller{}, connect.NewError(connect.CodeUnauthenticated, auth.ErrUnknownKey)
	}
	if err != nil {
		return caller{}, fail(err)
	}
	return caller{appID: app.GetId(), audience: app.GetAudience()}, nil
}

// self allows the operator, or the application appID itself; any other
// caller is told that the application does not exist (see owner).
func self(ctx context.Context, appID string) error {
	return owner(ctx, appID, &store.NotFoundError{Kind: "application", Name: appID})
}

// owner allows the operator, or the application appID that owns what is
// asked for. Any other application gets hidden, the very NOT_FOUND an
// unknown id gets: another application's ids cannot be told from unknown
// ones (the router answers the same way).
func owner(ctx context.Context, appID string, hidden *store.NotFoundError) error {
	p, _ := auth.FromContext(ctx)
	if p.Admin || (p.ApplicationID != "" && p.ApplicationID == appID) {
		return nil
	}
	return fail(hidden)
}

// text checks a free-text field.
func text(field, s string, max int) error {
	if !utf8.ValidString(s) {
		return invalid("%s is not valid UTF-8", field)
	}
	if len(s) > max {
		return invalid("%s is %d bytes, more than the %d allowed", field, len(s), max)
	}
	return nil
}

// validDomainName checks a domain name (eventtype.ValidateDomain).
func validDomainName(field, name string) error {
	if name == "" {
		return invalid("%s is required", field)
	}
	if err := eventtype.ValidateDomain(name); err != nil {
		return invalid("%s: %v", field, err)
	}
	return nil
}

// validProductName checks a product name (eventtype.ValidateProduct).
func validProductName(field, name string) error {
	if name == "" {
		return invalid("%s is required", field)
	}
	if err := eventtype.ValidateProduct(name); err != nil {
		return invalid("%s: %v", field, err)
	}
	return nil
}

// validEnum checks that an enum value is one the contract defines.
func validEnum(field string, e protoreflect.Enum) error {
	if e.Descriptor().Values().ByNumber(e.Number()) == nil {
		return invalid("%s: %d is not a value of %s", field, e.Number(), e.Descriptor().Name())
	}
	return nil
}

// validPatterns checks a list of event type names or patterns.
func validPatterns(field string, list []string, max int) error {
	if len(list) == 0 {
		return invalid("%s is empty: name at least one event type or pattern (billing.*)", field)
	}
	if len(list) > max {
		return invalid("%s has %d entries, more than the %d allowed", field, len(list), max)
	}
	seen := map[string]bool{}
	for i, p := range list {
		if err := eventtype.ValidatePattern(p); err != nil {
			return invalid("%s[%d]: %v", field, i, err)
		}
		if seen[p] {
			return invalid("%s lists %q twice", field, p)
		}
		seen[p] = true
	}
	return nil
}
