package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/freeport"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/services/registry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// FindRouter returns the router binary `make build` puts in ./bin: next to
// the running executable, else on PATH.
func FindRouter() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "router")
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath("router"); err == nil {
		return p, nil
	}
	return "", errors.New("the router binary is neither next to this executable nor on PATH: run `make build` (it builds ./bin/herald and ./bin/router) and run ./bin/herald")
}

// FindNATSServer returns nats-server from PATH or /usr/sbin/nats-server.
func FindNATSServer() (string, error) {
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, nil
	}
	if st, err := os.Stat("/usr/sbin/nats-server"); err == nil && !st.IsDir() {
		return "/usr/sbin/nats-server", nil
	}
	return "", errors.New("nats-server is neither on PATH nor at /usr/sbin/nats-server (Debian/Ubuntu: apt-get install nats-server), or pass --nats-server PATH")
}

// freeAddr picks an address below the ephemeral range (package freeport).
func freeAddr() (string, error) { return freeport.Addr() }

// probe answers the status and body of GET http://addr/path.
func probe(ctx context.Context, client *http.Client, addr, path string) (int, string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rpc.BaseURL(addr)+path, nil)
	res, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	res.Body.Close()
	return res.StatusCode, strings.TrimSpace(string(body)), nil
}

// waitReady polls http://addr/readyz until it answers 200. alive, when not
// nil, reports a process that died meanwhile. When aliveGrace > 0, a server
// that has answered /healthz for that long without becoming ready is
// accepted: the returned note says why it is not ready.
func waitReady(ctx context.Context, addr string, timeout, aliveGrace time.Duration, alive func() error) (note string, err error) {
	deadline := time.Now().Add(timeout)
	why := "no answer"
	client := &http.Client{Timeout: time.Second}
	var aliveSince time.Time
	for {
		if alive != nil {
			if err := alive(); err != nil {
				return "", err
			}
		}
		code, body, err := probe(ctx, client, addr, "/readyz")
		switch {
		case err != nil:
			why = err.Error()
		case code == http.StatusOK:
			return "", nil
		default:
			why = fmt.Sprintf("%d %s", code, body)
			if aliveGrace > 0 {
				if hc, _, herr := probe(ctx, client, addr, "/healthz"); herr == nil && hc == http.StatusOK {
					if aliveSince.IsZero() {
						aliveSince = time.Now()
					}
					if time.Since(aliveSince) >= aliveGrace {
						return fmt.Sprintf("%s answers /healthz but was not ready after %v (%s): going on", addr, aliveGrace, why), nil
					}
				}
			}
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s not ready after %v: %s", addr, timeout, why)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// startRegistry runs the registry in this process until the returned stop
// is called.
// benchMesh returns the settings of a bench's mesh over the Redis at url:
// a fresh admin key and a free loopback address for each service.
func benchMesh(url string) (config.Common, error) {
	common := config.Common{RedisURL: url, AdminKey: "hadm_bench_" + randomToken()}
	for _, a := range []*string{&common.RegistryAddr, &common.RouterAddr, &common.EdgeAddr, &common.MeteringAddr} {
		var err error
		if *a, err = freeAddr(); err != nil {
			return common, err
		}
	}
	return common, nil
}

// startRegistryIn starts the registry in this process, logging to
// registry.log in dir; stop ends it and closes the log.
func startRegistryIn(ctx context.Context, dir string, common config.Common, progress func(string, ...any)) (stop func(), err error) {
	regLog, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	progress("starting the registry (in this process) on %s", common.RegistryAddr)
	stopRegistry, err := startRegistry(ctx, common, slog.New(slog.NewJSONHandler(regLog, nil)))
	if err != nil {
		regLog.Close()
		return nil, fmt.Errorf("start registry: %w", err)
	}
	return func() { stopRegistry(); regLog.Close() }, nil
}

func startRegistry(ctx context.Context, common config.Common, log *slog.Logger) (stop func(), err error) {
	reg, err := registry.New(registry.Config{Common: common, Logger: log})
	if err != nil {
		return nil, err
	}
	if _, err := reg.Listen(); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- reg.Run(rctx) }()
	stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
		}
	}
	if _, err := waitReady(ctx, common.RegistryAddr, 30*time.Second, 0, func() error {
		select {
		case err := <-done:
			return fmt.Errorf("registry stopped: %v", err)
		default:
			return nil
		}
	}); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// principal is who the benchmark publishes as.
type principal struct {
	key     string
	account string // what the router records as the publisher
	note    string // why the admin key is used, if it is
}

// setupCatalog registers EventType and, unless asAdmin, an application with
// a publish grant on "*". When the application cannot be created, it falls
// back to the admin key and says why in note.
func setupCatalog(ctx context.Context, registryAddr, adminKey string, asAdmin bool) (principal, error) {
	client := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(registryAddr), rpc.ClientOptions(adminKey)...)
	_, err := client.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: EventType, Description: "An order was placed (benchmark payload).", Schema: Schema,
	}}))
	if err != nil && connect.CodeOf(err) != connect.CodeAlreadyExists {
		return principal{}, fmt.Errorf("register event type %s: %w", EventType, err)
	}
	admin := principal{key: adminKey, account: "admin"}
	if asAdmin {
		admin.note = "--as-admin: publishing with the admin key"
		return admin, nil
	}
	res, err := client.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name:   "herald-bench",
		Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "*"}},
	}}))
	if err != nil {
		admin.note = fmt.Sprintf("application could not be created (%v): publishing with the admin key", err)
		return admin, nil
	}
	if res.Msg.GetKey().GetSecret() == "" {
		admin.note = "CreateApplication returned no key secret: publishing with the admin key"
		return admin, nil
	}
	return principal{key: res.Msg.GetKey().GetSecret(), account: res.Msg.GetApplication().GetId()}, nil
}

// publisher publishes to the router over gRPC (grpc-go, one HTTP/2
// connection shared by all callers).
type publisher struct {
	conn   *grpc.ClientConn
	client routerv1.RouterServiceClient
	key    string
}

func newPublisher(routerAddr, key string) (*publisher, error) {
	conn, err := grpc.NewClient(routerAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &publisher{conn: conn, client: routerv1.NewRouterServiceClient(conn), key: key}, nil
}

func (p *publisher) Close() error { return p.conn.Close() }

// publish sends events in one call and returns their cursors; wantDuplicate
// says whether they must all be new (false) or all duplicates (true).
func (p *publisher) publish(ctx context.Context, events []*eventv1.CloudEvent, wantDuplicate bool) ([]string, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+p.key)
	res, err := p.client.Publish(ctx, &routerv1.PublishRequest{Events: events})
	if err != nil {
		return nil, err
	}
	if len(res.GetResults()) != len(events) {
		return nil, fmt.Errorf("%d results for %d events", len(res.GetResults()), len(events))
	}
	cursors := make([]string, len(events))
	for i, r := range res.GetResults() {
		if e := r.GetError(); e != nil {
			return nil, fmt.Errorf("event %s refused: code %d: %s", events[i].GetId(), e.GetCode(), e.GetMessage())
		}
		if r.GetDuplicate() != wantDuplicate {
			return nil, fmt.Errorf("event %s: duplicate=%v, want %v", events[i].GetId(), r.GetDuplicate(), wantDuplicate)
		}
		cursors[i] = r.GetCursor()
	}
	return cursors, nil
}

// batches splits events into batches of size b.
func batches(events []*eventv1.CloudEvent, b int) [][]*eventv1.CloudEvent {
	var out [][]*eventv1.CloudEvent
	for len(events) > 0 {
		n := min(b, len(events))
		out = append(out, events[:n])
		events = events[n:]
	}
	return out
}

// FindEdge returns the edge binary `make build` puts in ./bin: next to the
// running executable, else on PATH.
func FindEdge() (string, error) { return findService("edge") }

// FindMetering returns the metering binary `make build` puts in ./bin: next
// to the running executable, else on PATH.
func FindMetering() (string, error) { return findService("metering") }

// findService finds a service binary of `make build`: next to the running
// executable, else on PATH.
func findService(name string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("the %s binary is neither next to this executable nor on PATH: run `make build` (it builds ./bin/herald and the service binaries) and run ./bin/herald", name)
}
