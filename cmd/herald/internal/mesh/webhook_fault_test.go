package mesh_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/webhook"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/metering"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/heraldmesh/herald/services/router"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Fault tests of webhook delivery: the edge killed with SIGKILL while it
// delivers, a receiver that is down for a while, and an endpoint whose DNS
// answer turns to a private address (SSRF through the whole mesh).

// webhookEdgeEnv, set to 1, makes this test binary an edge process
// configured from HERALD_* variables, like services/edge/cmd/edge: the
// crash test kills it with SIGKILL, which an edge inside the test process
// could not be.
const webhookEdgeEnv = "HERALD_TEST_WEBHOOK_EDGE_PROCESS"

// testCA signs the TLS receivers' certificates. TestMain makes this
// process, and the processes it starts, trust it (SSL_CERT_FILE), so that
// the registry and the edge can reach an https endpoint by a name the
// allowlist does not open.
var testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func TestMain(m *testing.M) {
	if os.Getenv(webhookEdgeEnv) == "1" {
		os.Exit(serviceProcess("edge", edge.RunFromEnv))
	}
	if os.Getenv(meteringProcessEnv) == "1" {
		os.Exit(serviceProcess("metering", metering.RunFromEnv))
	}
	if os.Getenv(routerProcessEnv) == "1" {
		os.Exit(serviceProcess("router", router.RunFromEnv))
	}
	if os.Getenv(registryProcessEnv) == "1" {
		os.Exit(serviceProcess("registry", registry.RunFromEnv))
	}
	dir, err := os.MkdirTemp("", "herald-mesh-ca-")
	if err == nil {
		err = makeTestCA(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "test CA:", err)
		os.Exit(2)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// serviceProcess runs one service configured from the environment until
// SIGINT or SIGTERM: this test binary as a service process.
func serviceProcess(name string, run func(context.Context) error) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		return 1
	}
	return 0
}

// makeTestCA creates testCA, writes it to dir and points SSL_CERT_FILE at
// it; the system roots are loaded on first use, after this.
func makeTestCA(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "herald mesh test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	testCA.cert, testCA.key = cert, key
	path := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	return os.Setenv("SSL_CERT_FILE", path)
}

// leafCert is a server certificate of testCA for *.example.test and the
// loopback addresses.
func leafCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "hooks.example.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames:    []string{"*.example.test"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("127.0.0.2")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, testCA.cert, &key.PublicKey, testCA.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// meshParts says how startParts runs the mesh.
type meshParts struct {
	set func(*config.Common)
	// resolver resolves webhook hosts for the registry and the edge.
	resolver safehttp.Resolver
	// noEdge leaves the edge out: the test runs it as a process.
	noEdge bool
	// noMetering leaves metering out: the test runs it as a process
	// before the edge's start (or its call to e.connect).
	noMetering func(config.Common)
}

// startParts runs the services in-process one by one, as mesh.New does,
// with what mesh.New cannot give them (a test resolver), or without the
// edge. Without the edge, the test calls e.connect once it runs one.
func startParts(t *testing.T, p meshParts) *env {
	t.Helper()
	srv := testutil.Redis(t)
	common := config.Common{
		RedisURL: srv.URL(), AdminKey: adminKey,
		EdgeAddr: testutil.FreeAddr(t), RouterAddr: testutil.FreeAddr(t), RegistryAddr: testutil.FreeAddr(t), MeteringAddr: testutil.FreeAddr(t),
	}
	if p.set != nil {
		p.set(&common)
	}
	log := slog.New(slog.DiscardHandler)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	gcfg, err := registry.ConfigFromEnv()
	must(err)
	gcfg.Common, gcfg.Logger, gcfg.Addr, gcfg.WebhookResolver = common, log, common.RegistryAddr, p.resolver
	reg, err := registry.New(gcfg)
	must(err)
	testutil.Serve(t, reg)
	rcfg, err := router.ConfigFromEnv()
	must(err)
	rcfg.Common, rcfg.Logger, rcfg.Addr = common, log, common.RouterAddr
	rt, err := router.New(rcfg)
	must(err)
	testutil.Serve(t, rt)
	if p.noMetering != nil {
		p.noMetering(common)
	} else {
		mcfg, err := metering.ConfigFromEnv()
		must(err)
		mcfg.Common, mcfg.Logger, mcfg.Addr = common, log, common.MeteringAddr
		mt, err := metering.New(mcfg)
		must(err)
		testutil.Serve(t, mt)
	}
	e := &env{t: t, common: common, stop: func() {}, done: make(chan error, 1)}
	if p.noEdge {
		return e
	}
	ecfg, err := edge.ConfigFromEnv()
	must(err)
	ecfg.Common, ecfg.Logger, ecfg.Addr, ecfg.WebhookResolver = common, log, common.EdgeAddr, p.resolver
	ed, err := edge.New(ecfg)
	must(err)
	testutil.Serve(t, ed)
	e.connect(t)
	return e
}

// edgeProc is a service (an edge, or metering) running as a child process.
type edgeProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startEdgeProcess starts an edge process with the mesh's settings, on its
// edge address, and waits until it is ready. Its output is logged if the
// test fails; it is killed when the test ends.
func startEdgeProcess(t *testing.T, c config.Common) *edgeProc {
	t.Helper()
	return startServiceProcess(t, "edge", webhookEdgeEnv, c.EdgeAddr, c)
}

// startServiceProcess starts this test binary as the service that role
// (an environment variable TestMain reads) selects, with the mesh's
// settings and extra variables, and waits until it answers ready at addr.
func startServiceProcess(t *testing.T, name, role, addr string, c config.Common, extra ...string) *edgeProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), role+"=1",
		"HERALD_REDIS_URL="+c.RedisURL, "HERALD_ADMIN_KEY="+c.AdminKey,
		"HERALD_EDGE_ADDR="+c.EdgeAddr, "HERALD_ROUTER_ADDR="+c.RouterAddr,
		"HERALD_REGISTRY_ADDR="+c.RegistryAddr, "HERALD_METERING_ADDR="+c.MeteringAddr,
		"HERALD_SECRET_KEY="+c.SecretKey, "HERALD_WEBHOOK_ALLOW="+c.WebhookAllow,
	)
	cmd.Env = append(cmd.Env, extra...)
	var out bytes.Buffer // read only once the process has ended
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s process: %v", name, err)
	}
	p := &edgeProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
			t.Logf("%s process %d output (last lines):\n%s", name, cmd.Process.Pid, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	testutil.Eventually(t, 20*time.Second, func() bool {
		select {
		case <-p.done:
			t.Fatalf("the %s process ended before it was ready", name)
		default:
		}
		res, err := http.Get(rpc.BaseURL(addr) + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "the "+name+" process is ready")
	return p
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *edgeProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// createWebhookSub creates a subscription of the test application (the
// test's event type unless sub names types) and returns it with the
// endpoint's secret.
func (e *env) createWebhookSub(t *testing.T, sub *registryv1.Subscription) (*registryv1.Subscription, string) {
	t.Helper()
	sub.ApplicationId = e.appID
	if len(sub.Types) == 0 {
		sub.Types = []string{e.invoice}
	}
	res, err := e.reg.CreateSubscription(context.Background(), connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: sub}))
	if err != nil {
		t.Fatalf("create webhook subscription: %v", err)
	}
	return res.Msg.GetSubscription(), res.Msg.GetWebhookSecret()
}

// undelivered is what the subscription still holds: entries pending in its
// consumer group on the test type's stream, and deliveries waiting for a
// retry.
func (e *env) undelivered(t *testing.T, subID string) (pending, delayed int64) {
	t.Helper()
	opt, err := redis.ParseURL(e.common.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx := context.Background()
	p, err := rdb.XPending(ctx, eventlog.StreamKey(e.invoice), subscription.Group(subID)).Result()
	if err != nil {
		t.Fatal(err)
	}
	d, err := rdb.ZCard(ctx, "herald:sub:{"+subID+"}:delayed").Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count, d
}

// deadLetters lists the endpoint's dead letters.
func (e *env) deadLetters(t *testing.T, subID string) []*edgev1.WebhookDeadLetter {
	t.Helper()
	res, err := e.webhooks(e.appKey).ListWebhookDeadLetters(context.Background(), connect.NewRequest(&edgev1.ListWebhookDeadLettersRequest{SubscriptionId: subID, PageSize: 100}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetDeadLetters()
}

// eventAttempts lists the attempts at one event, newest first.
func (e *env) eventAttempts(t *testing.T, subID, cursor string) []*edgev1.Attempt {
	t.Helper()
	res, err := e.webhooks(e.appKey).ListAttempts(context.Background(), connect.NewRequest(&edgev1.ListAttemptsRequest{SubscriptionId: subID, Cursor: cursor, PageSize: 100}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetAttempts()
}

// countedExactly waits until metering counts n webhook deliveries, then
// checks that no more come in.
func (e *env) countedExactly(t *testing.T, n int64) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, func() bool { return e.webhookCount(t) >= n }, fmt.Sprintf("%d webhook deliveries counted", n))
	time.Sleep(1500 * time.Millisecond) // a second count would be folded by now
	if got := e.webhookCount(t); got != n {
		t.Fatalf("metering counted %d webhook deliveries, want exactly %d (one per event)", got, n)
	}
}

// verifyAll checks that every delivery verifies with the secret and that
// its webhook-id is the event's id; it returns how many times each id came.
func verifyAll(t *testing.T, hits []hit, secret string) map[string]int {
	t.Helper()
	v, err := webhook.NewVerifier(secret)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i, h := range hits {
		if err := v.Verify(h.header, h.body, time.Now()); err != nil {
			t.Fatalf("delivery %d does not verify: %v", i, err)
		}
		var ev struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(h.body, &ev); err != nil || ev.ID == "" || h.header.Get("webhook-id") != ev.ID {
			t.Fatalf("delivery %d: webhook-id %q, body %s", i, h.header.Get("webhook-id"), h.body)
		}
		seen[ev.ID]++
	}
	return seen
}

// The edge killed with SIGKILL while it delivers loses nothing: a new edge
// process delivers every event the first did not finish, with the same
// webhook-id and a valid signature, and metering counts each event once,
// however many times it was sent.
func TestWebhookEdgeKilledMidDeliveryLosesNothing(t *testing.T) {
	const n = 200
	e := startParts(t, meshParts{noEdge: true, set: func(c *config.Common) {
		c.SecretKey = secretbox.NewKey()
		c.WebhookAllow = "127.0.0.0/8"
	}})
	first := startEdgeProcess(t, e.common)
	e.connect(t)
	// The receiver kills the edge while it holds the request of the
	// killAt-th delivery: the edge dies mid-delivery, with that request
	// (and up to 3 others) in flight.
	const killAt = n / 5
	killed := make(chan string, 1)
	var inFlight atomic.Int64
	var flying int64
	r := newReceiver(t, func(i int, h hit) int {
		inFlight.Add(1)
		defer inFlight.Add(-1)
		if i == killAt {
			flying = inFlight.Load()
			first.kill()
			killed <- h.header.Get("webhook-id")
			return http.StatusNoContent // to nobody
		}
		time.Sleep(25 * time.Millisecond) // a bit slow: deliveries are in flight when the edge dies
		return http.StatusNoContent
	})
	// An ack timeout of 1s (the engine raises it to twice the request
	// timeout plus 5s: 7s) and the edge's lease of 10s bound how long the
	// killed edge's deliveries wait for the next one.
	sub, secret := e.createWebhookSub(t, &registryv1.Subscription{
		Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(time.Second)},
		Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{
			Url: r.URL + "/hooks", MaxConcurrency: 4, Timeout: durationpb.New(time.Second),
			RetrySchedule: short(100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond),
		}},
	})
	events := make([]*eventv1.CloudEvent, n)
	for i := range events {
		events[i] = invoiceEvent(fmt.Sprintf("crash-%03d", i), i)
	}
	published := time.Now()
	e.publish(events...)
	var cut string
	select {
	case cut = <-killed:
	case <-time.After(20 * time.Second):
		t.Fatalf("the first edge delivered %d events, not %d", len(r.got()), killAt)
	}
	t.Logf("edge killed %s after the publish, with %d of %d events received, %d requests in flight", time.Since(published).Round(time.Millisecond), len(r.got()), n, flying)

	startEdgeProcess(t, e.common)
	testutil.Eventually(t, 30*time.Second, func() bool {
		seen := map[string]bool{}
		for _, id := range r.ids() {
			seen[id] = true
		}
		return len(seen) == n
	}, "every event arrives after the edge is restarted")
	t.Logf("every event received %s after the publish", time.Since(published).Round(time.Millisecond))
	seen := verifyAll(t, r.got(), secret)
	again := 0
	for _, ev := range events {
		if seen[ev.GetId()] == 0 {
			t.Fatalf("event %s never arrived", ev.GetId())
		}
		again += seen[ev.GetId()] - 1
	}
	if len(seen) != n {
		t.Fatalf("%d distinct webhook-ids arrived, want %d", len(seen), n)
	}
	t.Logf("%d requests for %d events (%d sent again after the crash)", len(r.got()), n, again)
	if seen[cut] < 2 {
		t.Fatalf("event %s, in flight when the edge was killed, arrived %d times: it was never answered, so it must come again", cut, seen[cut])
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		p, d := e.undelivered(t, sub.GetId())
		return p == 0 && d == 0
	}, "nothing left pending or waiting for a retry")
	if dead := e.deadLetters(t, sub.GetId()); len(dead) != 0 {
		t.Fatalf("%d dead letters after the crash: %v", len(dead), dead[0])
	}
	e.countedExactly(t, n)
}

// A receiver that is down (its port closed: connection refused) gets
// everything once it is back on the same address: each event once, with
// its webhook-id; the attempts are on record as failures, then a success;
// metering counts each event once.
func TestWebhookReceiverDownThenBackGetsEverything(t *testing.T) {
	const n = 20
	e := startWebhooks(t)
	r := newReceiver(t, nil)
	addr := r.Listener.Addr().String()
	schedule := []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}
	for range 17 {
		schedule = append(schedule, 300*time.Millisecond)
	}
	sub, secret := e.createEndpoint(t, &registryv1.WebhookChannel{Url: r.URL + "/hooks", RetrySchedule: short(schedule...)})
	r.Close() // down: connection refused from now on
	events := make([]*eventv1.CloudEvent, n)
	for i := range events {
		events[i] = invoiceEvent(fmt.Sprintf("down-%02d", i), i)
	}
	cursors := e.publish(events...)
	testutil.Eventually(t, 20*time.Second, func() bool {
		for _, c := range cursors {
			if len(e.eventAttempts(t, sub.GetId(), c)) < 2 {
				return false
			}
		}
		return true
	}, "every event failed at least twice while the receiver is down")
	if got := r.got(); len(got) != 0 {
		t.Fatalf("a closed receiver got %d requests", len(got))
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	back := &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = back.Serve(ln) }()
	t.Cleanup(func() { _ = back.Close() })

	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) >= n }, "every event arrives once the receiver is back")
	time.Sleep(500 * time.Millisecond) // time for a delivery sent twice to show
	seen := verifyAll(t, r.got(), secret)
	for _, ev := range events {
		if seen[ev.GetId()] != 1 {
			t.Fatalf("event %s arrived %d times, want once: %v", ev.GetId(), seen[ev.GetId()], seen)
		}
	}
	if len(r.got()) != n {
		t.Fatalf("%d requests for %d events", len(r.got()), n)
	}
	for i, c := range cursors {
		a := e.eventAttempts(t, sub.GetId(), c)
		if len(a) < 3 || !a[0].GetSuccess() || a[0].GetStatus() != http.StatusNoContent || a[0].GetEventId() != events[i].GetId() {
			t.Fatalf("event %s: want failures then one success (newest first), got %v", events[i].GetId(), a)
		}
		for j, at := range a {
			if at.GetNumber() != int32(len(a)-j) {
				t.Fatalf("event %s: attempt numbers (newest first) %v", events[i].GetId(), a)
			}
			if j == 0 {
				continue
			}
			if at.GetSuccess() || at.GetStatus() != 0 || !strings.Contains(at.GetError(), "connection refused") {
				t.Fatalf("event %s: attempt %d while down: success %v, status %d, error %q", events[i].GetId(), at.GetNumber(), at.GetSuccess(), at.GetStatus(), at.GetError())
			}
		}
	}
	if dead := e.deadLetters(t, sub.GetId()); len(dead) != 0 {
		t.Fatalf("%d dead letters", len(dead))
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		p, d := e.undelivered(t, sub.GetId())
		return p == 0 && d == 0
	}, "nothing left pending or waiting for a retry")
	e.countedExactly(t, n)
}

// testResolver answers the host names a test sets, and "no such host" for
// the others.
type testResolver struct {
	mu    sync.Mutex
	hosts map[string][]netip.Addr
}

func newTestResolver() *testResolver { return &testResolver{hosts: map[string][]netip.Addr{}} }

func (r *testResolver) set(host string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hosts[host] = nil
	for _, a := range addrs {
		r.hosts[host] = append(r.hosts[host], netip.MustParseAddr(a))
	}
}

func (r *testResolver) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	addrs, ok := r.hosts[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []netip.Addr
	for _, a := range addrs {
		switch {
		case network == "ip4" && !a.Unmap().Is4(), network == "ip6" && !(a.Is6() && !a.Is4In6()):
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

// tlsReceiver is a receiver over TLS (a certificate of testCA) that counts
// the connections it accepts.
type tlsReceiver struct {
	*receiver
	conns atomic.Int64
}

// tlsReceivers starts two https receivers on the same port: the endpoint's,
// on 127.0.0.2, and a private one on 127.0.0.1 that nothing may reach. The
// endpoint's closes every connection after its request, so that each
// attempt dials (and resolves) again.
func tlsReceivers(t *testing.T) (good, private *tlsReceiver, port int) {
	t.Helper()
	cert := leafCert(t)
	start := func(ln net.Listener, keepAlive bool) *tlsReceiver {
		r := &tlsReceiver{receiver: &receiver{}}
		r.Server = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
		r.Listener.Close()
		r.Listener = ln
		r.Config.SetKeepAlivesEnabled(keepAlive)
		r.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				r.conns.Add(1)
			}
		}
		r.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		r.StartTLS()
		t.Cleanup(r.Close)
		return r
	}
	for range 20 {
		gl, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatalf("listen on 127.0.0.2: %v", err)
		}
		port = gl.Addr().(*net.TCPAddr).Port
		pl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			gl.Close() // the port is taken on 127.0.0.1: another one
			continue
		}
		return start(gl, false), start(pl, true), port
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil, 0
}

// webhookSSRFMesh runs the mesh with a test resolver and only 127.0.0.2
// allowlisted.
func webhookSSRFMesh(t *testing.T) (*env, *testResolver) {
	res := newTestResolver()
	e := startParts(t, meshParts{resolver: res, set: func(c *config.Common) {
		c.SecretKey = secretbox.NewKey()
		c.WebhookAllow = "127.0.0.2"
	}})
	return e, res
}

// An endpoint whose name resolved to an allowed address when it was
// created, and later resolves to a loopback (IPv4-mapped IPv6), private or
// cloud-metadata address: every attempt fails with that reason, naming the
// host and never the address; nothing reaches the address it now resolves
// to; the events are dead-lettered with their attempts, not dropped, and a
// replay delivers them once the name resolves to the allowed address again.
func TestWebhookDNSRebindToPrivateAddressIsRefusedAndDeadLettered(t *testing.T) {
	e, res := webhookSSRFMesh(t)
	good, private, port := tlsReceivers(t)
	const host = "hooks.example.test"
	res.set(host, "127.0.0.2")
	sub, secret := e.createEndpoint(t, &registryv1.WebhookChannel{
		Url: fmt.Sprintf("https://%s:%d/hooks", host, port), RetrySchedule: short(20*time.Millisecond, 20*time.Millisecond),
	})
	e.publish(invoiceEvent("before", 1))
	testutil.Eventually(t, 20*time.Second, func() bool { return len(good.got()) == 1 }, "delivered while the name resolves to the allowed address")

	since := time.Now()
	rebinds := []struct{ id, addr, class string }{
		{"rebind-mapped-loopback", "::ffff:127.0.0.1", "a loopback address"},
		{"rebind-private", "10.1.2.3", "a private address"},
		{"rebind-metadata", "169.254.169.254", "a cloud metadata address"},
	}
	for _, rb := range rebinds {
		res.set(host, rb.addr)
		cur := e.publish(invoiceEvent(rb.id, 2))[0]
		var dead *edgev1.WebhookDeadLetter
		testutil.Eventually(t, 20*time.Second, func() bool {
			if n := private.conns.Load(); n != 0 {
				t.Fatalf("%s: the private receiver got %d connections (%d requests)", rb.id, n, len(private.got()))
			}
			for _, d := range e.deadLetters(t, sub.GetId()) {
				if d.GetCursor() == cur {
					dead = d
					return true
				}
			}
			return false
		}, rb.id+" dead-lettered after its attempts")
		want := fmt.Sprintf("refused: host %q resolves to %s", host, rb.class)
		check := func(what string, as []*edgev1.Attempt) {
			t.Helper()
			if len(as) != 3 {
				t.Fatalf("%s: %s: %d attempts, want 3: %v", rb.id, what, len(as), as)
			}
			for _, a := range as {
				if a.GetSuccess() || a.GetStatus() != 0 || a.GetError() != want || a.GetEventId() != rb.id {
					t.Fatalf("%s: %s: attempt %d: success %v, status %d, error %q; want the error %q", rb.id, what, a.GetNumber(), a.GetSuccess(), a.GetStatus(), a.GetError(), want)
				}
				for _, leak := range []string{rb.addr, "127.0.0", "::ffff", "10.1.2.3", "169.254", "herald:"} {
					if strings.Contains(a.GetError(), leak) {
						t.Fatalf("%s: the attempt's error shows %q: %q", rb.id, leak, a.GetError())
					}
				}
			}
		}
		check("dead letter", dead.GetAttempts())
		check("ListAttempts", e.eventAttempts(t, sub.GetId(), cur))
		if !strings.Contains(dead.GetReason(), want) {
			t.Fatalf("%s: dead letter reason %q, want it to say %q", rb.id, dead.GetReason(), want)
		}
	}
	if n, got := private.conns.Load(), len(private.got()); n != 0 || got != 0 {
		t.Fatalf("the private receiver got %d connections and %d requests", n, got)
	}
	if n := len(good.got()); n != 1 {
		t.Fatalf("the endpoint's receiver got %d requests while its name resolved elsewhere", n)
	}

	// Not dropped: the name resolves to the allowed address again, and a
	// replay of what failed delivers each once.
	res.set(host, "127.0.0.2")
	rp, err := e.webhooks(e.appKey).Replay(context.Background(), connect.NewRequest(&edgev1.ReplayRequest{
		SubscriptionId: sub.GetId(), Selection: &edgev1.ReplayRequest_FailedSince{FailedSince: timestamppb.New(since)},
	}))
	if err != nil || rp.Msg.GetQueued() != int32(len(rebinds)) {
		t.Fatalf("replay: %v %v", rp, err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(good.got()) == 1+len(rebinds) }, "the replayed events arrive")
	seen := verifyAll(t, good.got(), secret)
	for _, rb := range rebinds {
		if seen[rb.id] != 1 {
			t.Fatalf("%s arrived %d times after the replay", rb.id, seen[rb.id])
		}
	}
	if n := private.conns.Load(); n != 0 {
		t.Fatalf("the private receiver got %d connections", n)
	}
	e.countedExactly(t, int64(1+len(rebinds)))
}

// Endpoint creation refuses a disallowed URL through the registry API with
// INVALID_ARGUMENT and a reason in the customer's terms (never the address
// a name resolved to), before any request is made: private, metadata and
// loopback literals (IPv4-mapped IPv6 too), names that resolve to such
// addresses (one bad address among good ones is enough), plain http to a
// name the allowlist does not open, and a name that does not resolve.
func TestWebhookEndpointCreationRefusesDisallowedURLs(t *testing.T) {
	e, res := webhookSSRFMesh(t)
	good, private, port := tlsReceivers(t)
	res.set("hooks.example.test", "127.0.0.2")
	res.set("internal.example.test", "10.1.2.3")
	res.set("metadata.example.test", "169.254.169.254")
	res.set("mapped.example.test", "::ffff:127.0.0.1")
	res.set("mixed.example.test", "127.0.0.2", "127.0.0.1")
	resolved := []string{"10.1.2.3", "169.254", "127.0.0", "::ffff"}
	cases := []struct {
		url, want string
		leaks     []string // besides the host written in the URL
	}{
		{"https://10.0.0.5/hooks", `refused: host "10.0.0.5" is a private address`, nil},
		{"https://169.254.169.254/latest/meta-data/", `refused: host "169.254.169.254" is a cloud metadata address`, nil},
		{fmt.Sprintf("https://127.0.0.1:%d/hooks", port), `refused: host "127.0.0.1" is a loopback address`, nil},
		{fmt.Sprintf("https://[::ffff:127.0.0.1]:%d/hooks", port), `refused: host "::ffff:127.0.0.1" is a loopback address`, nil},
		{"https://internal.example.test/hooks", `refused: host "internal.example.test" resolves to a private address`, resolved},
		{"https://metadata.example.test/hooks", `refused: host "metadata.example.test" resolves to a cloud metadata address`, resolved},
		{fmt.Sprintf("https://mapped.example.test:%d/hooks", port), `refused: host "mapped.example.test" resolves to a loopback address`, resolved},
		{fmt.Sprintf("https://mixed.example.test:%d/hooks", port), `refused: host "mixed.example.test" resolves to a loopback address`, resolved},
		{fmt.Sprintf("http://hooks.example.test:%d/hooks", port), `refused: plain http is not allowed for host "hooks.example.test"; use https`, resolved},
		{"https://nosuch.example.test/hooks", `cannot resolve host "nosuch.example.test": no such host`, nil},
	}
	for _, c := range cases {
		_, err := e.reg.CreateSubscription(context.Background(), connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
			ApplicationId: e.appID, Types: []string{e.invoice},
			Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: c.url}},
		}}))
		var ce *connect.Error
		if err == nil || connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("%s: %v, want INVALID_ARGUMENT", c.url, err)
		}
		if !errors.As(err, &ce) || ce.Message() != "subscription.webhook.url: "+c.want {
			t.Fatalf("%s: %v, want the message %q", c.url, err, "subscription.webhook.url: "+c.want)
		}
		for _, leak := range c.leaks {
			if strings.Contains(ce.Message(), leak) {
				t.Fatalf("%s: the error shows %q: %q", c.url, leak, ce.Message())
			}
		}
	}
	if n, m := private.conns.Load(), good.conns.Load(); n != 0 || m != 0 {
		t.Fatalf("refused URLs were requested: %d connections to the private receiver, %d to the endpoint's", n, m)
	}
	list, err := e.reg.ListSubscriptions(context.Background(), connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.Msg.GetSubscriptions()); n != 0 {
		t.Fatalf("%d subscriptions exist after refusals only", n)
	}
	// The same endpoint, by https and a name resolving to the allowed
	// address, is created: the refusals above are the policy's.
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: fmt.Sprintf("https://hooks.example.test:%d/hooks", port)})
	if good.conns.Load() == 0 {
		t.Fatal("the allowed endpoint was created without its validation request")
	}
	if n := private.conns.Load(); n != 0 {
		t.Fatalf("the private receiver got %d connections", n)
	}
}
