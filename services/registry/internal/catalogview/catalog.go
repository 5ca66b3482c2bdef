// Package catalogview renders the registry's catalog for people and tools:
// an AsyncAPI 3.0 document (JSON or YAML) and a human-readable HTML page,
// both narrowed by the same filters (domain, product, audience,
// application). It reads a Catalog snapshot and never talks to Redis.
package catalogview

import (
	"cmp"
	"fmt"
	"net/url"
	"slices"
	"strings"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/eventtype"
)

// Catalog is a consistent snapshot of the registry's catalog. Its fields are
// those of the registry store's Snapshot, in the same order, so that a
// *store.Snapshot converts to a *Catalog directly.
type Catalog struct {
	// Revision is the catalog revision the snapshot was taken at.
	Revision int64
	// Domains, EventTypes, Products, Applications: in any order.
	Domains    []*registryv1.Domain
	EventTypes []*registryv1.EventType
	Products   []*registryv1.Product
	// SchemaVersions holds each event type's versions, by type name.
	SchemaVersions map[string][]*registryv1.SchemaVersion
	Applications   []*registryv1.Application
	// Bridges: the AsyncAPI document shows each as a server, a channel
	// and an operation. Their secrets and sealed fields are never shown.
	Bridges []*registryv1.Bridge
}

// Filter narrows what a view shows. The zero Filter shows everything.
// Conditions combine: a type is shown when it meets all of them.
type Filter struct {
	// Domain keeps the types of one domain (the first segment of their names).
	Domain string
	// Product keeps the types matched by one product's patterns.
	Product string
	// Audience keeps what that kind of consumer may see: INTERNAL (or unset)
	// everything, PARTNER partner and public types, PUBLIC public types.
	Audience registryv1.Audience
	// Application keeps what one application (by id) may publish or
	// subscribe to under its grants and audience; its operations follow its
	// grants (send for publish grants, receive for subscribe grants).
	Application string
}

// Query parameter names of a Filter, as ParseFilter reads them.
const (
	ParamDomain      = "domain"
	ParamProduct     = "product"
	ParamAudience    = "audience"
	ParamApplication = "application"
)

// BadFilterError is a filter value that is not well-formed (HTTP 400).
type BadFilterError struct {
	Param, Value, Reason string
}

func (e *BadFilterError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("query parameter %s: %s", e.Param, e.Reason)
	}
	return fmt.Sprintf("query parameter %s=%q: %s", e.Param, e.Value, e.Reason)
}

// NotFoundError is a filter naming something the catalog does not hold
// (HTTP 404).
type NotFoundError struct {
	Kind, Name string
}

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("the catalog has no %s %q", e.Kind, e.Name)
}

// ParseFilter reads a Filter from query parameters: domain, product,
// audience (public, partner or internal) and application. Unknown
// parameters and repeated ones are refused, so that a typo does not
// silently show the whole catalog.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	for name, values := range q {
		switch name {
		case ParamDomain, ParamProduct, ParamAudience, ParamApplication:
		default:
			return Filter{}, &BadFilterError{Param: name, Reason: fmt.Sprintf("unknown parameter (known: %s, %s, %s, %s)",
				ParamDomain, ParamProduct, ParamAudience, ParamApplication)}
		}
		if len(values) > 1 {
			return Filter{}, &BadFilterError{Param: name, Reason: "given more than once"}
		}
	}
	// Empty values count as unset (an HTML form's "all").
	f.Domain = strings.TrimSpace(q.Get(ParamDomain))
	if f.Domain != "" {
		if err := validDomain(f.Domain); err != nil {
			return Filter{}, &BadFilterError{Param: ParamDomain, Value: f.Domain, Reason: err.Error()}
		}
	}
	f.Product = strings.TrimSpace(q.Get(ParamProduct))
	if f.Product != "" {
		if err := eventtype.ValidateProduct(f.Product); err != nil {
			return Filter{}, &BadFilterError{Param: ParamProduct, Value: f.Product, Reason: err.Error()}
		}
	}
	f.Application = strings.TrimSpace(q.Get(ParamApplication))
	if f.Application != "" {
		if err := validName(f.Application); err != nil {
			return Filter{}, &BadFilterError{Param: ParamApplication, Value: f.Application, Reason: err.Error()}
		}
	}
	if strings.TrimSpace(q.Get(ParamAudience)) != "" {
		a, err := ParseAudience(q.Get(ParamAudience))
		if err != nil {
			return Filter{}, &BadFilterError{Param: ParamAudience, Value: q.Get(ParamAudience), Reason: err.Error()}
		}
		f.Audience = a
	}
	return f, nil
}

// ParseAudience reads public, partner or internal (any case).
func ParseAudience(s string) (registryv1.Audience, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "public":
		return registryv1.Audience_AUDIENCE_PUBLIC, nil
	case "partner":
		return registryv1.Audience_AUDIENCE_PARTNER, nil
	case "internal":
		return registryv1.Audience_AUDIENCE_INTERNAL, nil
	}
	return 0, fmt.Errorf("must be public, partner or internal")
}

// Query is the inverse of ParseFilter.
func (f Filter) Query() url.Values {
	q := url.Values{}
	if f.Domain != "" {
		q.Set(ParamDomain, f.Domain)
	}
	if f.Product != "" {
		q.Set(ParamProduct, f.Product)
	}
	if f.Audience != registryv1.Audience_AUDIENCE_UNSPECIFIED {
		q.Set(ParamAudience, audienceName(f.Audience))
	}
	if f.Application != "" {
		q.Set(ParamApplication, f.Application)
	}
	return q
}

// IsZero reports whether f shows everything.
func (f Filter) IsZero() bool { return f == Filter{} }

// String describes the filter for people ("domain billing, audience public").
func (f Filter) String() string {
	var parts []string
	if f.Domain != "" {
		parts = append(parts, "domain "+f.Domain)
	}
	if f.Product != "" {
		parts = append(parts, "product "+f.Product)
	}
	if f.Audience != registryv1.Audience_AUDIENCE_UNSPECIFIED {
		parts = append(parts, "audience "+audienceName(f.Audience))
	}
	if f.Application != "" {
		parts = append(parts, "application "+f.Application)
	}
	if len(parts) == 0 {
		return "the whole catalog"
	}
	return strings.Join(parts, ", ")
}

// validDomain is the registry's rule for domain names (platform/eventtype).
func validDomain(s string) error { return eventtype.ValidateDomain(s) }

func validName(s string) error {
	if s == "" {
		return fmt.Errorf("is empty")
	}
	if len(s) > 200 {
		return fmt.Errorf("is longer than 200 characters")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("has control characters")
		}
	}
	return nil
}

// narrower returns the more restrictive of two audiences.
func narrower(a, b registryv1.Audience) registryv1.Audience {
	return max(normAudience(a), normAudience(b))
}

func normAudience(a registryv1.Audience) registryv1.Audience {
	if a == registryv1.Audience_AUDIENCE_UNSPECIFIED {
		return registryv1.Audience_AUDIENCE_INTERNAL
	}
	return a
}

func audienceName(a registryv1.Audience) string {
	switch a {
	case registryv1.Audience_AUDIENCE_PUBLIC:
		return "public"
	case registryv1.Audience_AUDIENCE_PARTNER:
		return "partner"
	default:
		return "internal"
	}
}

func visibilityName(v registryv1.Visibility) string {
	switch v {
	case registryv1.Visibility_VISIBILITY_PUBLIC:
		return "public"
	case registryv1.Visibility_VISIBILITY_PARTNER:
		return "partner"
	default:
		return "internal"
	}
}

func lifecycleName(l registryv1.Lifecycle) string {
	switch l {
	case registryv1.Lifecycle_LIFECYCLE_DEPRECATED:
		return "deprecated"
	case registryv1.Lifecycle_LIFECYCLE_RETIRED:
		return "retired"
	default:
		return "active"
	}
}

func compatibilityName(c registryv1.Compatibility) string {
	if c == registryv1.Compatibility_COMPATIBILITY_UNSPECIFIED {
		c = registryv1.Compatibility_COMPATIBILITY_BACKWARD
	}
	return strings.ToLower(strings.TrimPrefix(c.String(), "COMPATIBILITY_"))
}

// selection is what a filter keeps of a catalog.
type selection struct {
	filter  Filter
	types   []*typeView // in name order
	domains []*domainView
	// products are those relevant to the selection, with their selected types.
	products []*productView
	// app is the application of an application filter.
	app *registryv1.Application
}

type typeView struct {
	et       *registryv1.EventType
	schema   string // latest schema (JSON text)
	version  int32  // latest version number (0 if unknown)
	versions int    // number of versions
	send     bool   // producers may publish it (not retired; publish grant)
	receive  bool   // consumers may receive it (subscribe grant)
	products []string
}

type domainView struct {
	d          *registryv1.Domain
	registered bool
	types      []*typeView
}

type productView struct {
	p     *registryv1.Product
	types []*typeView
}

// selectTypes applies f to c.
func selectTypes(c *Catalog, f Filter) (*selection, error) {
	if c == nil {
		c = &Catalog{}
	}
	s := &selection{filter: f}
	domains := map[string]*registryv1.Domain{}
	for _, d := range c.Domains {
		if d != nil {
			domains[d.GetName()] = d
		}
	}
	var product *registryv1.Product
	if f.Product != "" {
		for _, p := range c.Products {
			if p.GetName() == f.Product {
				product = p
			}
		}
		if product == nil {
			return nil, &NotFoundError{Kind: "product", Name: f.Product}
		}
	}
	audience := f.Audience
	if f.Application != "" {
		for _, a := range c.Applications {
			if a.GetId() == f.Application {
				s.app = a
			}
		}
		if s.app == nil {
			return nil, &NotFoundError{Kind: "application", Name: f.Application}
		}
		audience = narrower(audience, s.app.GetAudience())
	}
	// A consumer narrower than INTERNAL knows only the domains and products
	// with a type it may see, as the registry's API does: the others are
	// not found, rather than shown empty.
	restricted := normAudience(audience) != registryv1.Audience_AUDIENCE_INTERNAL
	if f.Domain != "" {
		_, known := domains[f.Domain]
		if restricted {
			known = false
		}
		for _, et := range c.EventTypes {
			known = known || (eventtype.DomainOf(et.GetName()) == f.Domain && access.Visible(audience, et.GetVisibility()))
		}
		if !known {
			return nil, &NotFoundError{Kind: "domain", Name: f.Domain}
		}
	}
	if product != nil && restricted {
		visible := false
		for _, et := range c.EventTypes {
			visible = visible || (eventtype.MatchAny(product.GetEventTypes(), et.GetName()) && access.Visible(audience, et.GetVisibility()))
		}
		if !visible {
			return nil, &NotFoundError{Kind: "product", Name: f.Product}
		}
	}

	for _, et := range c.EventTypes {
		if et == nil || et.GetName() == "" {
			continue
		}
		name := et.GetName()
		if f.Domain != "" && eventtype.DomainOf(name) != f.Domain {
			continue
		}
		if product != nil && !eventtype.MatchAny(product.GetEventTypes(), name) {
			continue
		}
		if !access.Visible(audience, et.GetVisibility()) {
			continue
		}
		tv := &typeView{et: et, receive: true, send: et.GetLifecycle() != registryv1.Lifecycle_LIFECYCLE_RETIRED}
		if s.app != nil {
			tv.send = tv.send && access.Allowed(s.app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_PUBLISH, name)
			tv.receive = access.Allowed(s.app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, name)
			if !tv.send && !tv.receive {
				continue
			}
		}
		tv.schema, tv.version, tv.versions = latestSchema(c, et)
		s.types = append(s.types, tv)
	}
	slices.SortFunc(s.types, func(a, b *typeView) int { return cmp.Compare(a.et.GetName(), b.et.GetName()) })

	// Domains: every registered one when only a domain filter (or none) is
	// set, otherwise those with selected types.
	narrowed := product != nil || audience != registryv1.Audience_AUDIENCE_UNSPECIFIED || s.app != nil
	byName := map[string]*domainView{}
	for _, d := range domains {
		if narrowed || (f.Domain != "" && d.GetName() != f.Domain) {
			continue
		}
		byName[d.GetName()] = &domainView{d: d, registered: true}
	}
	for _, tv := range s.types {
		dn := eventtype.DomainOf(tv.et.GetName())
		dv := byName[dn]
		if dv == nil {
			d, ok := domains[dn]
			if !ok {
				d = &registryv1.Domain{Name: dn}
			}
			dv = &domainView{d: d, registered: ok}
			byName[dn] = dv
		}
		dv.types = append(dv.types, tv)
	}
	for _, dv := range byName {
		s.domains = append(s.domains, dv)
	}
	slices.SortFunc(s.domains, func(a, b *domainView) int { return cmp.Compare(a.d.GetName(), b.d.GetName()) })

	// Products: the filtered one, or every product with a selected type
	// (every product at all when nothing narrows the view).
	for _, p := range c.Products {
		if p == nil || (product != nil && p != product) {
			continue
		}
		pv := &productView{p: p}
		for _, tv := range s.types {
			if eventtype.MatchAny(p.GetEventTypes(), tv.et.GetName()) {
				pv.types = append(pv.types, tv)
				tv.products = append(tv.products, p.GetName())
			}
		}
		if len(pv.types) == 0 && (narrowed || f.Domain != "") && p != product {
			continue
		}
		s.products = append(s.products, pv)
	}
	slices.SortFunc(s.products, func(a, b *productView) int { return cmp.Compare(a.p.GetName(), b.p.GetName()) })
	for _, tv := range s.types {
		slices.Sort(tv.products)
	}
	return s, nil
}

// latestSchema returns an event type's latest schema text, its version
// number and how many versions it has.
func latestSchema(c *Catalog, et *registryv1.EventType) (string, int32, int) {
	versions := c.SchemaVersions[et.GetName()]
	var latest *registryv1.SchemaVersion
	for _, v := range versions {
		if v != nil && (latest == nil || v.GetVersion() > latest.GetVersion()) {
			latest = v
		}
	}
	if latest == nil || (et.GetSchemaVersion() > latest.GetVersion() && et.GetSchema() != "") {
		n := len(versions)
		if n == 0 && et.GetSchema() != "" {
			n = max(1, int(et.GetSchemaVersion()))
		}
		return et.GetSchema(), et.GetSchemaVersion(), n
	}
	return latest.GetSchema(), latest.GetVersion(), len(versions)
}
