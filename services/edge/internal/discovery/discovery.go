// Package discovery builds the edge's GET /apis.json: an APIs.json document
// (apisjson.org, specification 0.23) that lists Herald's APIs for the
// caller, with the links a robot needs to find their descriptions (AsyncAPI,
// OpenAPI, gRPC reflection), their endpoints and the consumer portal.
package discovery

import (
	"encoding/json"
	"net/http"
	"net/url"
	"time"

	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
)

// SpecificationVersion is the APIs.json version the document follows; its
// JSON Schema is vendored in testdata and the tests validate against it.
const SpecificationVersion = "0.23"

// Path is the document's route on the edge (the spec's well-known place).
const Path = "/apis.json"

// Paths on the edge that the document links.
const (
	PortalPath   = "/portal/"
	ConsolePath  = "/"
	StreamPath   = "/v1/stream"
	PollPath     = "/v1/poll"
	WebSubPath   = "/websub"
	TopicsPath   = "/v1/topics/"
	reflection   = "grpc.reflection.v1.ServerReflection"
	catalogPage  = "/catalog"
	asyncAPIJSON = "/asyncapi.json"
	asyncAPIYAML = "/asyncapi.yaml"
	openAPI      = "/openapi.json"
	dashboard    = "/dashboard"
)

// Links are the services' public base URLs, without a trailing slash.
type Links struct {
	Edge, Registry, Router, Metering string
}

// Caller is who asks, as far as the document depends on it.
type Caller struct {
	// Admin is the operator, who sees every API and the dashboard.
	Admin bool
	// Audience is the caller's application's (unset: internal).
	Audience registryv1.Audience
	// Publish and Subscribe tell whether the caller holds any grant of
	// that kind: without one the router's, or the delivery API, is left
	// out, since every call to it would be refused.
	Publish, Subscribe bool
}

// Document is an APIs.json document: the members Herald fills.
type Document struct {
	AID                  string     `json:"aid"`
	Name                 string     `json:"name"`
	Description          string     `json:"description"`
	URL                  string     `json:"url"`
	Image                string     `json:"image,omitempty"`
	Type                 string     `json:"type,omitempty"`
	Visibility           string     `json:"visibility,omitempty"`
	Created              string     `json:"created"`
	Modified             string     `json:"modified"`
	SpecificationVersion string     `json:"specificationVersion"`
	Tags                 []string   `json:"tags"`
	APIs                 []API      `json:"apis"`
	Common               []Property `json:"common,omitempty"`
	Maintainers          []Contact  `json:"maintainers"`
}

// API is one entry of apis.
type API struct {
	AID         string     `json:"aid"`
	Name        string     `json:"name"`
	Description string     `json:"description"`
	Image       string     `json:"image"`
	HumanURL    string     `json:"humanURL"`
	BaseURL     string     `json:"baseURL"`
	Version     string     `json:"version,omitempty"`
	Tags        []string   `json:"tags,omitempty"`
	Properties  []Property `json:"properties"`
}

// Property is a link (url) or an inline value (data), typed by one of the
// spec's property types or an x- extension.
type Property struct {
	Type        string         `json:"type"`
	Name        string         `json:"name,omitempty"`
	Description string         `json:"description,omitempty"`
	MediaType   string         `json:"mediaType,omitempty"`
	URL         string         `json:"url,omitempty"`
	Data        map[string]any `json:"data,omitempty"`
	Tags        []string       `json:"tags,omitempty"`
}

// Contact is a vCard-like maintainer.
type Contact struct {
	FN  string `json:"FN"`
	URL string `json:"url,omitempty"`
}

// The x- property types of this document, for what the spec has no type
// for. Each url is where a client connects.
const (
	// TypeGRPC is a gRPC service (also gRPC-Web and Connect, on the same
	// URL); its url is the service's path prefix and its name the full
	// service name, described by the server's reflection.
	TypeGRPC = "x-grpc"
	// TypeGRPCReflection is a server's grpc.reflection.v1 (and v1alpha)
	// service, which answers without a key.
	TypeGRPCReflection = "x-grpc-reflection"
	TypeSSE            = "x-server-sent-events"
	TypePoll           = "x-long-polling"
	TypeWebSubHub      = "x-websub-hub"
	TypeWebSubTopics   = "x-websub-topics"
)

// image is the icon of every entry (the schema asks for one per API): a
// small inline SVG, so that the document needs no other route.
const image = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E" +
	"%3Ccircle cx='8' cy='24' r='3' fill='%23334'/%3E%3Cpath d='M8 15a9 9 0 0 1 9 9M8 7a17 17 0 0 1 17 17' " +
	"fill='none' stroke='%23334' stroke-width='3'/%3E%3C/svg%3E"

// Build returns the document for caller, dated created (when the edge
// started) and modified (now: the document follows the caller's grants).
func Build(l Links, c Caller, created, modified time.Time) *Document {
	host := "herald"
	if u, err := url.Parse(l.Edge); err == nil && u.Hostname() != "" {
		host = u.Hostname()
	}
	aid := func(s string) string { return host + ":" + s }
	portal := l.Edge + PortalPath
	grpc := func(base, service, what string) Property {
		return Property{Type: TypeGRPC, Name: service, Description: what, MediaType: "application/grpc",
			URL: base + "/" + service + "/", Tags: []string{"grpc", "grpc-web", "connect"}}
	}
	refl := func(base string) Property {
		return Property{Type: TypeGRPCReflection, Name: reflection, MediaType: "application/grpc",
			Description: "gRPC server reflection (v1 and v1alpha) of the services at this base URL; it answers without a key.",
			URL:         base + "/" + reflection + "/", Tags: []string{"grpc", "reflection"}}
	}
	asyncAPI := []Property{
		{Type: "AsyncAPI", Name: "AsyncAPI 3.0 (JSON)", MediaType: "application/json", URL: l.Registry + asyncAPIJSON,
			Description: "The event types this key may see, as an AsyncAPI 3.0 document; fetch it with the same key (domain=, product= narrow it)."},
		{Type: "AsyncAPI", Name: "AsyncAPI 3.0 (YAML)", MediaType: "application/yaml", URL: l.Registry + asyncAPIYAML,
			Description: "The same AsyncAPI 3.0 document in YAML."},
	}
	d := &Document{
		AID:  aid("herald"),
		Name: "Herald",
		Description: "Herald, an event mesh: a catalog of event types with JSON Schemas, publishing over gRPC into a durable log, " +
			"delivery by Server-Sent Events, HTTP/2 streams, long polling, webhooks and WebSub, and usage, quotas and invoices. " +
			"Every API here takes Authorization: Bearer <key>; this list is the one for the key that fetched it.",
		URL:                  l.Edge + Path,
		Image:                image,
		Type:                 "Collection",
		Visibility:           visibility(c),
		Created:              created.UTC().Format(time.DateOnly),
		Modified:             modified.UTC().Format(time.DateOnly),
		SpecificationVersion: SpecificationVersion,
		Tags:                 []string{"events", "event-driven", "CloudEvents", "AsyncAPI", "gRPC", "webhooks", "SSE", "WebSub"},
		Maintainers:          []Contact{{FN: "The operator of this Herald", URL: l.Edge}},
	}
	catalog := API{
		AID: aid("herald-catalog"), Name: "Herald catalog", Version: "v1", Image: image,
		Description: "The catalog of event types (domains, JSON Schema versions, examples, lifecycle), products, applications, " +
			"their keys and subscriptions, and webhook endpoints, over gRPC, gRPC-Web and Connect; the catalog as AsyncAPI.",
		BaseURL: l.Registry, HumanURL: l.Registry + catalogPage, Tags: []string{"catalog", "schemas", "AsyncAPI"},
		Properties: append(append([]Property{}, asyncAPI...),
			Property{Type: "Documentation", Name: "Catalog page", MediaType: "text/html", URL: l.Registry + catalogPage,
				Description: "The catalog this key may see, as a page (browsers: ?access_token=)."},
			grpc(l.Registry, registryv1connect.RegistryServiceName, "Event types, schemas, applications, keys, subscriptions."),
			refl(l.Registry)),
	}
	d.APIs = append(d.APIs, catalog)
	if c.Admin || c.Publish {
		d.APIs = append(d.APIs, API{
			AID: aid("herald-publish"), Name: "Herald publishing", Version: "v1", Image: image,
			Description: "Publish CloudEvents of the types this key may publish: validated against their schemas, " +
				"deduplicated on (source, id), appended to the log; each event gets its cursor or why it was refused.",
			BaseURL: l.Router, HumanURL: l.Registry + catalogPage, Tags: []string{"publish", "CloudEvents", "gRPC"},
			Properties: []Property{
				asyncAPI[0],
				grpc(l.Router, routerv1connect.RouterServiceName, "Publish, and durable subscriptions: Subscribe, Ack, Nack, dead letters."),
				refl(l.Router),
			},
		})
	}
	if c.Admin || c.Subscribe {
		d.APIs = append(d.APIs, API{
			AID: aid("herald-delivery"), Name: "Herald event delivery", Version: "v1", Image: image,
			Description: "Events of the types this key may subscribe to, with one cursor on every channel: Server-Sent Events, " +
				"long polling, HTTP/2 server streams, webhooks (Standard Webhooks) and WebSub.",
			BaseURL: l.Edge, HumanURL: portal, Tags: []string{"delivery", "SSE", "long polling", "webhooks", "WebSub", "CloudEvents"},
			Properties: []Property{
				asyncAPI[0],
				{Type: TypeSSE, Name: "GET " + StreamPath, MediaType: "text/event-stream", URL: l.Edge + StreamPath,
					Description: "Server-Sent Events: ?types=<patterns>, resume with Last-Event-ID or last_event_id=; browsers use browser tokens."},
				{Type: TypePoll, Name: "GET " + PollPath, MediaType: "application/json", URL: l.Edge + PollPath,
					Description: "Long polling: ?types=<patterns>&cursor=<cursor>&wait=<duration>; answers the events after the cursor and the next cursor."},
				{Type: TypeWebSubHub, Name: "POST " + WebSubPath, MediaType: "application/x-www-form-urlencoded", URL: l.Edge + WebSubPath,
					Description: "The WebSub hub (W3C): subscribe a callback to a topic, with hub.secret for X-Hub-Signature."},
				{Type: TypeWebSubTopics, Name: "GET " + TopicsPath + "<type>", URL: l.Edge + TopicsPath,
					Description: "WebSub topics: GET this URL followed by an event type names its hub in Link headers."},
				grpc(l.Edge, edgev1connect.EdgeServiceName, "StreamEvents: events as an HTTP/2 server stream."),
				grpc(l.Edge, edgev1connect.WebhookServiceName, "Webhook endpoints, their attempts, replays and secrets."),
				refl(l.Edge),
				{Type: "Portal", Name: "Consumer portal", MediaType: "text/html", URL: portal,
					Description: "The consumer portal: browse the catalog, subscribe, manage webhook endpoints and keys, see usage and invoices."},
				{Type: "Console", Name: "Live event console", MediaType: "text/html", URL: l.Edge + ConsolePath,
					Description: "A page that streams events with a browser token."},
			},
		})
	}
	metering := API{
		AID: aid("herald-metering"), Name: "Herald usage and billing", Version: "v1", Image: image,
		Description: "Usage counted once per delivery, quotas, plans, invoices and producer statements: gRPC services and their REST gateway, described by OpenAPI.",
		BaseURL:     l.Metering, HumanURL: portal, Tags: []string{"usage", "quotas", "billing", "REST", "OpenAPI"},
		Properties: []Property{
			{Type: "OpenAPI", Name: "OpenAPI (REST gateway)", MediaType: "application/json", URL: l.Metering + openAPI,
				Description: "The REST gateway's OpenAPI document (no key needed to read it; the routes need one)."},
			grpc(l.Metering, meteringv1connect.MeteringServiceName, "Usage records and analytics."),
			grpc(l.Metering, meteringv1connect.QuotaServiceName, "Quotas and their status."),
			grpc(l.Metering, meteringv1connect.BillingServiceName, "Plans, invoices and producer statements."),
			refl(l.Metering),
		},
	}
	if c.Admin {
		metering.HumanURL = l.Metering + dashboard
		metering.Properties = append(metering.Properties, Property{Type: "Console", Name: "Operators' dashboard", MediaType: "text/html",
			URL: l.Metering + dashboard, Description: "Usage, quotas and invoices of every tenant, for the operator."})
	}
	d.APIs = append(d.APIs, metering)
	d.Common = []Property{
		{Type: "Portal", Name: "Consumer portal", MediaType: "text/html", URL: portal,
			Description: "Self-service for consumers: catalog, subscriptions, webhook endpoints, keys, usage and invoices."},
		{Type: "Authentication", Name: "Bearer keys",
			Description: "Every API takes Authorization: Bearer <key>, an application's key (hk_...) or the operator's; data is an OpenAPI security scheme.",
			Data:        map[string]any{"type": "http", "scheme": "bearer"}},
	}
	return d
}

// visibility maps the caller's audience to the spec's visibility.
func visibility(c Caller) string {
	switch {
	case c.Admin:
		return "Private"
	case c.Audience == registryv1.Audience_AUDIENCE_PUBLIC:
		return "Public"
	case c.Audience == registryv1.Audience_AUDIENCE_PARTNER:
		return "Partner"
	default:
		return "Private"
	}
}

// Write sends d as JSON. The document differs by key: it is private to the
// caller, and fresh for five minutes (grants change seldom). An error
// means nothing was written.
func Write(w http.ResponseWriter, d *Document) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "private, max-age=300")
	h.Set("Vary", "Authorization")
	_, _ = w.Write(append(b, '\n'))
	return nil
}
