package edge_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/heraldmesh/herald/services/router"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"
)

// bridgeMesh is a registry and a router in this process, and edges as
// child processes (which a test may kill with SIGKILL), over a private
// redis-server: what a bridge runs in.
type bridgeMesh struct {
	t      *testing.T
	common config.Common
	rdb    *redis.Client
	reg    registryv1connect.RegistryServiceClient
	pub    routerv1connect.RouterServiceClient // as the application
	appID  string
	appKey string
}

// bridgeType is the event type the bridge tests carry.
const bridgeType = "shop.order.paid"

func startBridgeMesh(t *testing.T) *bridgeMesh {
	t.Helper()
	srv := testutil.Redis(t)
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey, SecretKey: secretbox.NewKey()}
	reg, err := registry.New(registry.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	common.RegistryAddr = testutil.Serve(t, reg)
	rt, err := router.New(router.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	common.RouterAddr = testutil.Serve(t, rt)
	m := &bridgeMesh{t: t, common: common, rdb: testutil.RedisClient(t, srv)}
	m.reg = registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...)
	ctx := context.Background()
	testutil.Eventually(t, 20*time.Second, func() bool {
		_, err := m.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
			Name: bridgeType, Schema: `{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}`,
		}}))
		return err == nil
	}, "the registry takes an event type")
	app, err := m.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "shop", Tenant: "acme", Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "shop.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "shop.*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	m.appID, m.appKey = app.Msg.GetApplication().GetId(), app.Msg.GetKey().GetSecret()
	m.pub = routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RouterAddr), rpc.ClientOptions(app.Msg.GetKey().GetSecret())...)
	return m
}

// edgeProc is an edge running as a child process.
type edgeProc struct {
	addr   string
	cmd    *exec.Cmd
	out    *bytes.Buffer
	exited chan struct{}
}

// edge starts an edge process (this test binary, see TestMain) with short
// bridge leases and ack timeouts, so that another one takes over soon
// after a kill.
func (m *bridgeMesh) edge() *edgeProc {
	m.t.Helper()
	p := &edgeProc{addr: testutil.FreeAddr(m.t), out: &bytes.Buffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), edgeProcessEnv+"=20000",
		"HERALD_REDIS_URL="+m.common.RedisURL, "HERALD_ADMIN_KEY="+adminKey, "HERALD_SECRET_KEY="+m.common.SecretKey,
		"HERALD_REGISTRY_ADDR="+m.common.RegistryAddr, "HERALD_ROUTER_ADDR="+m.common.RouterAddr, "HERALD_EDGE_ADDR="+p.addr,
		"HERALD_EDGE_BRIDGE_LEASE=1s", "HERALD_EDGE_BRIDGE_ACK_TIMEOUT=2s")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	m.t.Cleanup(func() {
		p.kill()
		if m.t.Failed() {
			lines := strings.Split(strings.TrimSpace(p.out.String()), "\n")
			m.t.Logf("edge %s log (last lines):\n%s", p.addr, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	testutil.Eventually(m.t, 20*time.Second, func() bool {
		res, err := http.Get("http://" + p.addr + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	}, "the edge process is ready")
	return p
}

// kill ends the process with SIGKILL: nothing it held is handed back.
func (p *edgeProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// bridges is a BridgeService client of the edge.
func (p *edgeProc) bridges() edgev1connect.BridgeServiceClient {
	return edgev1connect.NewBridgeServiceClient(rpc.HTTPClient(), rpc.BaseURL(p.addr), rpc.ClientOptions(adminKey)...)
}

// status is the bridge's status as an edge tells it.
func (p *edgeProc) status(t *testing.T, name string) *edgev1.BridgeStatus {
	t.Helper()
	res, err := p.bridges().ListBridgeStatus(context.Background(), connect.NewRequest(&edgev1.ListBridgeStatusRequest{Bridges: []string{name}}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetStatuses()[0]
}

// create makes a bridge of the mesh's application.
func (m *bridgeMesh) create(b *registryv1.Bridge) *registryv1.Bridge {
	m.t.Helper()
	b.ApplicationId = m.appID
	res, err := m.reg.CreateBridge(context.Background(), connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: b}))
	if err != nil {
		m.t.Fatal(err)
	}
	return res.Msg.GetBridge()
}

// publish publishes events n from..from+count-1 (ids e<n>, partition keys
// k<n%5>) and returns their ids.
func (m *bridgeMesh) publish(from, count int) []string {
	m.t.Helper()
	var evs []*eventv1.CloudEvent
	var ids []string
	for i := from; i < from+count; i++ {
		id := fmt.Sprintf("e%d", i)
		ids = append(ids, id)
		evs = append(evs, &eventv1.CloudEvent{Id: id, Source: "/shop", SpecVersion: "1.0", Type: bridgeType,
			Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
				"partitionkey": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: fmt.Sprintf("k%d", i%5)}},
			},
			Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"n":%d}`, i)}})
	}
	res, err := m.pub.Publish(context.Background(), connect.NewRequest(&routerv1.PublishRequest{Events: evs}))
	if err != nil {
		m.t.Fatal(err)
	}
	for _, r := range res.Msg.GetResults() {
		if r.GetError() != nil {
			m.t.Fatalf("publish refused: %v", r.GetError())
		}
	}
	return ids
}

// farSide reads what reached the external system: event ids, with how
// often each came.
type farSide func() map[string]int

// sinkSurvivesKill runs a sink through the failures every bridge must
// survive: the edge running it killed with SIGKILL mid-stream (another edge
// takes over), and the far side down for a while then back (down and up
// may be nil when the system has no server to stop). Every event published
// reaches the far side; repeats are allowed (at least once).
func sinkSurvivesKill(t *testing.T, m *bridgeMesh, b *registryv1.Bridge, far farSide, down, up func()) {
	t.Helper()
	first := m.edge()
	testutil.Eventually(t, 20*time.Second, func() bool { return first.status(t, b.GetName()).GetRunning() }, "an edge runs the bridge")
	var ids []string
	ids = append(ids, m.publish(0, 100)...)
	testutil.Eventually(t, 30*time.Second, func() bool { return len(far()) >= 20 }, "the first events reach the far side")
	first.kill()
	second := m.edge()
	ids = append(ids, m.publish(100, 100)...)
	testutil.Eventually(t, 60*time.Second, func() bool { return covers(far(), ids) }, "every event reaches the far side after the kill")
	if down != nil {
		down()
		ids = append(ids, m.publish(200, 100)...)
		time.Sleep(time.Second) // the sink fails meanwhile and retries
		up()
		testutil.Eventually(t, 90*time.Second, func() bool { return covers(far(), ids) }, "every event reaches the far side once it is back")
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return second.status(t, b.GetName()).GetLag() == 0 }, "the sink's lag drops to 0")
}

func covers(got map[string]int, ids []string) bool {
	for _, id := range ids {
		if got[id] == 0 {
			return false
		}
	}
	return true
}

// collector gathers ids from a far side's reader goroutine.
type collector struct {
	mu  sync.Mutex
	ids map[string]int
}

func newCollector() *collector { return &collector{ids: map[string]int{}} }

func (c *collector) add(id string) {
	c.mu.Lock()
	c.ids[id]++
	c.mu.Unlock()
}

func (c *collector) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.ids))
	for k, v := range c.ids {
		out[k] = v
	}
	return out
}

// TestBridgeServiceAccess: BridgeService over a real edge with no key, a
// revoked key, another tenant's key and the owner's; a withdrawn subscribe
// grant stops a running sink at once (its events wait, and its lag shows
// them); no error carries internals.
func TestBridgeServiceAccess(t *testing.T) {
	m := startBridgeMesh(t)
	ctx := context.Background()
	dir := t.TempDir()
	b := m.create(&registryv1.Bridge{Name: "to-lake", Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		System: &registryv1.Bridge_Lake{Lake: &registryv1.LakeBridge{Directory: dir, MaxFileBytes: 1 << 20, MaxFileAge: durationpb.New(time.Second)}},
		Sink:   &registryv1.BridgeSink{Types: []string{bridgeType}, Start: fromStart()}})
	p := m.edge()
	as := func(key string) edgev1connect.BridgeServiceClient {
		var opts []connect.ClientOption
		if key != "" {
			opts = rpc.ClientOptions(key)
		}
		return edgev1connect.NewBridgeServiceClient(rpc.HTTPClient(), rpc.BaseURL(p.addr), opts...)
	}
	other, err := m.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "rival", Tenant: "globex", Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "shop.*"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := m.reg.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: m.appID}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.reg.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: revoked.Msg.GetKey().GetId()})); err != nil {
		t.Fatal(err)
	}
	internals := []string{m.common.RedisURL, "herald:", "127.0.0.1", m.common.RegistryAddr}
	clean := func(what string, err error) {
		t.Helper()
		for _, s := range internals {
			if err != nil && strings.Contains(err.Error(), s) {
				t.Errorf("%s: the error carries %q: %v", what, s, err)
			}
		}
	}
	for name, key := range map[string]string{"no key": "", "a revoked key": revoked.Msg.GetKey().GetSecret()} {
		c := as(key)
		_, err := c.ListBridgeStatus(ctx, connect.NewRequest(&edgev1.ListBridgeStatusRequest{}))
		_, err2 := c.ListBridgeDeadLetters(ctx, connect.NewRequest(&edgev1.ListBridgeDeadLettersRequest{Bridge: "to-lake"}))
		_, err3 := c.ReplayBridge(ctx, connect.NewRequest(&edgev1.ReplayBridgeRequest{Bridge: "to-lake"}))
		for _, e := range []error{err, err2, err3} {
			if connect.CodeOf(e) != connect.CodeUnauthenticated {
				t.Errorf("%s: %v, want UNAUTHENTICATED", name, e)
			}
			clean(name, e)
		}
	}
	rival := as(other.Msg.GetKey().GetSecret())
	if res, err := rival.ListBridgeStatus(ctx, connect.NewRequest(&edgev1.ListBridgeStatusRequest{})); err != nil || len(res.Msg.GetStatuses()) != 0 {
		t.Errorf("another tenant lists: %v %v", res, err)
	}
	for _, call := range []func() error{
		func() error {
			_, err := rival.ListBridgeStatus(ctx, connect.NewRequest(&edgev1.ListBridgeStatusRequest{Bridges: []string{b.GetId()}}))
			return err
		},
		func() error {
			_, err := rival.ListBridgeDeadLetters(ctx, connect.NewRequest(&edgev1.ListBridgeDeadLettersRequest{Bridge: "to-lake"}))
			return err
		},
	} {
		err := call()
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("another tenant's view of the bridge: %v, want NOT_FOUND", err)
		}
		clean("another tenant", err)
	}
	_, err = rival.ReplayBridge(ctx, connect.NewRequest(&edgev1.ReplayBridgeRequest{Bridge: "to-lake"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("another tenant replays: %v", err)
	}
	owner := as(m.appKey)
	if res, err := owner.ListBridgeStatus(ctx, connect.NewRequest(&edgev1.ListBridgeStatusRequest{})); err != nil || len(res.Msg.GetStatuses()) != 1 {
		t.Fatalf("the owner lists: %v %v", res, err)
	}
	_, err = owner.ListBridgeDeadLetters(ctx, connect.NewRequest(&edgev1.ListBridgeDeadLettersRequest{Bridge: "to-lake", PageToken: "not-a-token"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("a bad page token: %v", err)
	}

	// The sink runs and delivers; then the grant goes, on the running sink.
	testutil.Eventually(t, 20*time.Second, func() bool { return p.status(t, "to-lake").GetRunning() }, "the sink runs")
	m.publish(0, 10)
	far := lakeReader(t, dir)
	testutil.Eventually(t, 30*time.Second, func() bool { return len(far()) == 10 }, "the first 10 in the lake")
	app, err := m.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: m.appID}))
	if err != nil {
		t.Fatal(err)
	}
	a := app.Msg.GetApplication()
	a.Grants = []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "shop.*"}}
	if _, err := m.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: a})); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the edge's catalog follows the registry's Watch
	m.publish(10, 10)
	testutil.Eventually(t, 20*time.Second, func() bool { return p.status(t, "to-lake").GetLag() >= 10 }, "the withheld events show as lag")
	time.Sleep(2 * time.Second) // two file rolls
	if n := len(far()); n != 10 {
		t.Fatalf("%d events in the lake after the grant was withdrawn, want the 10 before", n)
	}
}
