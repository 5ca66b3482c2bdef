package registry_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const adminKey = "registry-test-admin-key"

const invoiceSchema = `{
  "type": "object",
  "required": ["invoice_id", "amount"],
  "properties": {
    "invoice_id": {"type": "string"},
    "amount": {"type": "integer", "minimum": 0}
  }
}`

// env is a Redis and a registry running for one test.
type env struct {
	addr  string
	rdb   *redis.Client
	admin registryv1connect.RegistryServiceClient
	stop  func() // stops the registry gracefully (also done at the end of the test)
	redis *redisserver.Server
}

// testSecretKey is the HERALD_SECRET_KEY of the registries tests start.
var testSecretKey = secretbox.NewKey()

// start starts a registry on a new Redis. It has a secret key; webhook
// endpoint host names resolve with testResolver, and nothing is
// allowlisted (see startWith).
func start(t *testing.T) *env { return startWith(t, nil) }

// startWith starts a registry on srv (nil: a new Redis), its configuration
// changed by each option.
func startWith(t *testing.T, srv *redisserver.Server, opts ...func(*registry.Config)) *env {
	t.Helper()
	if srv == nil {
		srv = testutil.Redis(t)
	}
	cfg := registry.Config{
		Common:          config.Common{RedisURL: srv.URL(), AdminKey: adminKey, EdgeAddr: config.DefaultEdgeAddr, SecretKey: testSecretKey},
		Addr:            "127.0.0.1:0",
		Logger:          slog.New(slog.DiscardHandler),
		WebhookResolver: testResolver,
	}
	for _, o := range opts {
		o(&cfg)
	}
	svc, err := registry.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := svc.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("registry stopped with: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	e := &env{addr: addr.String(), rdb: testutil.RedisClient(t, srv), stop: stop, redis: srv}
	e.admin = e.as(adminKey)
	testutil.Eventually(t, 10*time.Second, func() bool {
		res, err := http.Get(rpc.BaseURL(e.addr) + "/readyz")
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "the registry is ready")
	return e
}

// as returns a client calling with key.
func (e *env) as(key string) registryv1connect.RegistryServiceClient {
	return registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.addr), rpc.ClientOptions(key)...)
}

// revision reads the catalog revision straight from Redis.
func (e *env) revision(t *testing.T) int64 {
	t.Helper()
	rev, err := e.rdb.Get(context.Background(), "herald:{registry}:revision").Int64()
	if err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	return rev
}

func (e *env) createType(t *testing.T, et *registryv1.EventType) *registryv1.EventType {
	t.Helper()
	if et.Schema == "" {
		et.Schema = invoiceSchema
	}
	res, err := e.admin.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et}))
	if err != nil {
		t.Fatalf("create event type %s: %v", et.GetName(), err)
	}
	return res.Msg.GetEventType()
}

// createApp creates an application and returns it with its first key's
// secret.
func (e *env) createApp(t *testing.T, app *registryv1.Application) (*registryv1.Application, string) {
	t.Helper()
	res, err := e.admin.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: app}))
	if err != nil {
		t.Fatalf("create application %s: %v", app.GetName(), err)
	}
	return res.Msg.GetApplication(), res.Msg.GetKey().GetSecret()
}

func subscribe(pattern string) *registryv1.Grant {
	return &registryv1.Grant{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: pattern}
}

func publish(pattern string) *registryv1.Grant {
	return &registryv1.Grant{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: pattern}
}

// wantCode fails unless err has the code and its message contains every
// fragment.
func wantCode(t *testing.T, what string, err error, code connect.Code, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want %v", what, code)
		return
	}
	if got := connect.CodeOf(err); got != code {
		t.Errorf("%s: %v, want %v", what, err, code)
		return
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("%s: %q does not mention %q", what, err.Error(), f)
		}
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// must wraps the result of a call that has to succeed:
// must(client.Call(ctx, req)).msg(t) is the response message.
func must[T any](res *connect.Response[T], err error) result[T] { return result[T]{res, err} }

type result[T any] struct {
	res *connect.Response[T]
	err error
}

func (r result[T]) msg(t *testing.T) *T {
	t.Helper()
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.res.Msg
}

func TestDomains(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	created := must(e.admin.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: &registryv1.Domain{
		Name: "billing", Description: "Invoices and payments.", Owner: "team-billing",
	}}))).msg(t).GetDomain()
	if created.GetRevision() == 0 || created.GetCreateTime() == nil {
		t.Errorf("created domain has no revision or creation time: %v", created)
	}
	got := must(e.admin.GetDomain(ctx, connect.NewRequest(&registryv1.GetDomainRequest{Name: "billing"}))).msg(t).GetDomain()
	if !proto.Equal(got, created) {
		t.Errorf("get: %v, want %v", got, created)
	}
	must(e.admin.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: &registryv1.Domain{Name: "identity"}}))).msg(t)
	list := must(e.admin.ListDomains(ctx, connect.NewRequest(&registryv1.ListDomainsRequest{}))).msg(t).GetDomains()
	// herald is registered at start.
	if len(list) != 3 || list[0].GetName() != "billing" || list[1].GetName() != "herald" || list[2].GetName() != "identity" {
		t.Errorf("list: %v, want billing, herald and identity", list)
	}

	got.Description = "Invoices, payments and refunds."
	updated := must(e.admin.UpdateDomain(ctx, connect.NewRequest(&registryv1.UpdateDomainRequest{Domain: got}))).msg(t).GetDomain()
	if updated.GetDescription() != got.GetDescription() || updated.GetRevision() <= got.GetRevision() || updated.GetOwner() != "team-billing" {
		t.Errorf("update: %v", updated)
	}
	if !updated.GetCreateTime().AsTime().Equal(created.GetCreateTime().AsTime()) {
		t.Errorf("update changed the creation time")
	}
	// The revision read before the update is stale now.
	_, err := e.admin.UpdateDomain(ctx, connect.NewRequest(&registryv1.UpdateDomainRequest{Domain: got}))
	wantCode(t, "stale update", err, connect.CodeAborted, "billing", "revision "+itoa(got.GetRevision()), "revision "+itoa(updated.GetRevision()))
}

func TestEventTypes(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	sunset := time.Now().Add(90 * 24 * time.Hour).UTC().Truncate(time.Second)
	created := e.createType(t, &registryv1.EventType{
		Name: "billing.invoice.paid", Description: "An invoice was paid.", Owner: "team-billing",
		Visibility: registryv1.Visibility_VISIBILITY_PARTNER, Compatibility: registryv1.Compatibility_COMPATIBILITY_NONE,
		Examples: []*registryv1.Example{{Name: "small", Data: `{"invoice_id":"in_1","amount":5}`}},
	})
	if created.GetSchemaVersion() != 1 || created.GetSchema() != invoiceSchema || created.GetPartitions() != 1 || created.GetRevision() == 0 {
		t.Errorf("created: %v", created)
	}
	// The domain was created with it.
	domain := must(e.admin.GetDomain(ctx, connect.NewRequest(&registryv1.GetDomainRequest{Name: "billing"}))).msg(t).GetDomain()
	if domain.GetRevision() >= created.GetRevision() {
		t.Errorf("domain revision %d, type revision %d: the domain's change should come first", domain.GetRevision(), created.GetRevision())
	}
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.created"})
	e.createType(t, &registryv1.EventType{Name: "identity.user.created"})

	// Listing: name order, domain filter, pages.
	names := func(ts []*registryv1.EventType) string {
		var out []string
		for _, et := range ts {
			out = append(out, et.GetName())
		}
		return strings.Join(out, ",")
	}
	all := must(e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))).msg(t).GetEventTypes()
	if got := names(all); got != "billing.invoice.created,billing.invoice.paid,herald.endpoint.disabled,herald.endpoint.ping,herald.invoice.finalized,herald.quota.warning,identity.user.created" {
		t.Errorf("list: %s", got)
	}
	billing := must(e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{Domain: "billing"}))).msg(t).GetEventTypes()
	if got := names(billing); got != "billing.invoice.created,billing.invoice.paid" {
		t.Errorf("list of billing: %s", got)
	}
	page1 := must(e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{PageSize: 2}))).msg(t)
	page2 := must(e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{PageSize: 2, PageToken: page1.GetNextPageToken()}))).msg(t)
	page3 := must(e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{PageSize: 2, PageToken: page2.GetNextPageToken()}))).msg(t)
	page4 := must(e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{PageSize: 2, PageToken: page3.GetNextPageToken()}))).msg(t)
	if names(page1.GetEventTypes()) != "billing.invoice.created,billing.invoice.paid" || names(page2.GetEventTypes()) != "herald.endpoint.disabled,herald.endpoint.ping" ||
		names(page3.GetEventTypes()) != "herald.invoice.finalized,herald.quota.warning" ||
		names(page4.GetEventTypes()) != "identity.user.created" || page4.GetNextPageToken() != "" {
		t.Errorf("pages: %s | %s | %s | %s (%q)", names(page1.GetEventTypes()), names(page2.GetEventTypes()), names(page3.GetEventTypes()), names(page4.GetEventTypes()), page4.GetNextPageToken())
	}

	// Metadata changes; the schema does not.
	in := proto.Clone(created).(*registryv1.EventType)
	in.Description, in.Lifecycle, in.SunsetTime = "Paid in full.", registryv1.Lifecycle_LIFECYCLE_DEPRECATED, timestamppb.New(sunset)
	in.Schema = `{"type":"string"}`
	updated := must(e.admin.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: in}))).msg(t).GetEventType()
	if updated.GetDescription() != "Paid in full." || updated.GetLifecycle() != registryv1.Lifecycle_LIFECYCLE_DEPRECATED ||
		updated.GetSchema() != invoiceSchema || updated.GetRevision() <= created.GetRevision() || len(updated.GetExamples()) != 1 {
		t.Errorf("updated: %v", updated)
	}

	// A new schema version becomes the latest, and changes the revision.
	v2Schema := `{"type":"object","required":["invoice_id"],"properties":{"invoice_id":{"type":"string"}}}`
	v2 := must(e.admin.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{EventType: "billing.invoice.paid", Schema: v2Schema}))).msg(t).GetSchemaVersion()
	if v2.GetVersion() != 2 || v2.GetSchema() != v2Schema || v2.GetEventType() != "billing.invoice.paid" {
		t.Errorf("version: %v", v2)
	}
	latest := must(e.admin.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "billing.invoice.paid"}))).msg(t).GetEventType()
	if latest.GetSchema() != v2Schema || latest.GetSchemaVersion() != 2 || latest.GetRevision() <= updated.GetRevision() {
		t.Errorf("after a new version: %v", latest)
	}
	versions := must(e.admin.ListSchemaVersions(ctx, connect.NewRequest(&registryv1.ListSchemaVersionsRequest{EventType: "billing.invoice.paid"}))).msg(t).GetSchemaVersions()
	if len(versions) != 2 || versions[0].GetVersion() != 1 || versions[0].GetSchema() != invoiceSchema || versions[1].GetVersion() != 2 {
		t.Errorf("versions: %v", versions)
	}
	// Examples name the version they conform to.
	in = proto.Clone(latest).(*registryv1.EventType)
	in.Examples = []*registryv1.Example{
		{Name: "v1", Data: `{"invoice_id":"in_1","amount":5}`, SchemaVersion: 1},
		{Name: "latest", Data: `{"invoice_id":"in_2"}`},
	}
	must(e.admin.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: in}))).msg(t)
}

func TestProducts(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"})
	created := must(e.admin.CreateProduct(ctx, connect.NewRequest(&registryv1.CreateProductRequest{Product: &registryv1.Product{
		Name: "payments-pro", Description: "Everything about payments.",
		EventTypes: []string{"billing.invoice.paid", "payments.*"}, // the pattern matches nothing yet: fine
	}}))).msg(t).GetProduct()
	got := must(e.admin.GetProduct(ctx, connect.NewRequest(&registryv1.GetProductRequest{Name: "payments-pro"}))).msg(t).GetProduct()
	if !proto.Equal(got, created) || created.GetRevision() == 0 {
		t.Errorf("get: %v, want %v", got, created)
	}
	got.EventTypes = append(got.EventTypes, "billing.*")
	updated := must(e.admin.UpdateProduct(ctx, connect.NewRequest(&registryv1.UpdateProductRequest{Product: got}))).msg(t).GetProduct()
	if len(updated.GetEventTypes()) != 3 || updated.GetRevision() <= created.GetRevision() {
		t.Errorf("update: %v", updated)
	}
	list := must(e.admin.ListProducts(ctx, connect.NewRequest(&registryv1.ListProductsRequest{}))).msg(t).GetProducts()
	if len(list) != 1 || !proto.Equal(list[0], updated) {
		t.Errorf("list: %v", list)
	}
	_, err := e.admin.UpdateProduct(ctx, connect.NewRequest(&registryv1.UpdateProductRequest{Product: created}))
	wantCode(t, "stale update", err, connect.CodeAborted, "payments-pro")
}

func TestApplications(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, secret := e.createApp(t, &registryv1.Application{
		Name: "shop", Tenant: "acme", Audience: registryv1.Audience_AUDIENCE_PARTNER,
		Grants: []*registryv1.Grant{publish("shop.*"), subscribe("billing.*")},
	})
	if !strings.HasPrefix(app.GetId(), "app_") || app.GetRevision() == 0 || len(app.GetGrants()) != 2 || secret == "" {
		t.Errorf("created: %v, secret %q", app, secret)
	}
	other, _ := e.createApp(t, &registryv1.Application{Name: "other", Tenant: "globex"})

	// An application reads itself, not others, and cannot list.
	self := e.as(secret)
	got := must(self.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t).GetApplication()
	if !proto.Equal(got, app) {
		t.Errorf("get: %v, want %v", got, app)
	}
	_, err := self.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: other.GetId()}))
	wantCode(t, "get another application", err, connect.CodeNotFound)
	_, err = self.ListApplications(ctx, connect.NewRequest(&registryv1.ListApplicationsRequest{}))
	wantCode(t, "list with an application key", err, connect.CodePermissionDenied)
	_, err = self.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: app}))
	wantCode(t, "update with an application key", err, connect.CodePermissionDenied)

	all := must(e.admin.ListApplications(ctx, connect.NewRequest(&registryv1.ListApplicationsRequest{}))).msg(t).GetApplications()
	acme := must(e.admin.ListApplications(ctx, connect.NewRequest(&registryv1.ListApplicationsRequest{Tenant: "acme"}))).msg(t).GetApplications()
	if len(all) != 2 || len(acme) != 1 || acme[0].GetId() != app.GetId() {
		t.Errorf("list: %v; of acme: %v", all, acme)
	}

	in := proto.Clone(app).(*registryv1.Application)
	in.Name, in.Grants = "shop v2", []*registryv1.Grant{subscribe("*")}
	updated := must(e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: in}))).msg(t).GetApplication()
	if updated.GetName() != "shop v2" || len(updated.GetGrants()) != 1 || updated.GetRevision() <= app.GetRevision() || updated.GetTenant() != "acme" {
		t.Errorf("update: %v", updated)
	}
	_, err = e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: app}))
	wantCode(t, "stale update", err, connect.CodeAborted, app.GetId())
}
