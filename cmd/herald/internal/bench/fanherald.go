package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/redis/go-redis/v9"
)

// fanType is the event type of the fan-out benchmark.
const fanType = "bench.fanout.tick"

// fanSchema is its JSON Schema: the event number, the publisher's stamp
// and padding.
const fanSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["hseq", "hts", "pad"],
  "properties": {
    "hseq": {"type": "integer", "minimum": 1},
    "hts":  {"type": "integer"},
    "pad":  {"type": "string"}
  },
  "additionalProperties": false
}`

// heraldFan is Herald's whole path: gRPC Publish to the router, the log in
// Redis (AOF), the edge's hub, SSE.
type heraldFan struct {
	o        FanoutOptions
	dir      string
	progress func(string, ...any)
	srv      interface{ Stop() error }
	rdb      *redis.Client
	stopReg  func()
	common   config.Common
	router   *child
	edges    []*child
	addrs    []string
	pub      *publisher
	readKey  string
	redisVer string
	ev       atomic.Int64 // event ids
}

func startHeraldFan(ctx context.Context, dir string, o FanoutOptions, progress func(string, ...any)) (_ *heraldFan, err error) {
	h := &heraldFan{o: o, dir: dir, progress: progress}
	defer func() {
		if err != nil {
			err = h.withLogs(err)
			h.close()
		}
	}()
	url := ""
	if o.Cluster > 0 {
		if o.RedisFsync != "always" {
			return nil, fmt.Errorf("--cluster runs Redis with appendfsync always only")
		}
		progress("herald: starting a Redis Cluster of %d masters (AOF, appendfsync always)", o.Cluster)
		c, err := redisserver.StartCluster(ctx, redisserver.ClusterOptions{Dir: filepath.Join(dir, "cluster"), Masters: o.Cluster, AppendOnly: true})
		if err != nil {
			return nil, fmt.Errorf("start redis cluster: %w", err)
		}
		h.srv, url = c, c.URL()
		h.redisVer = fmt.Sprintf("a Redis Cluster of %d masters", o.Cluster)
	} else {
		progress("herald: starting redis-server (AOF, appendfsync %s)", o.RedisFsync)
		srv, rdb, version, err := startRedis(ctx, dir, o.RedisFsync, o.RedisAOFRewriteMinSize, 8, 30*time.Second)
		if err != nil {
			return nil, err
		}
		h.srv, h.rdb, h.redisVer, url = srv, rdb, version, srv.URL()
	}
	h.common = config.Common{RedisURL: url, AdminKey: "hadm_bench_" + randomToken(), SecretKey: secretbox.NewKey()}
	for _, a := range []*string{&h.common.RegistryAddr, &h.common.RouterAddr, &h.common.EdgeAddr, &h.common.MeteringAddr} {
		if *a, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	regLog, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	defer regLog.Close()
	if h.stopReg, err = startRegistry(ctx, h.common, slog.New(slog.NewJSONHandler(regLog, nil))); err != nil {
		return nil, fmt.Errorf("start registry: %w", err)
	}
	reg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(h.common.RegistryAddr), rpc.ClientOptions(h.common.AdminKey)...)
	if err := registerFanType(ctx, reg); err != nil {
		return nil, err
	}
	pubKey, err := benchApp(ctx, reg, "bench-fanout-publisher", registryv1.GrantAction_GRANT_ACTION_PUBLISH)
	if err != nil {
		return nil, err
	}
	if h.readKey, err = benchApp(ctx, reg, "bench-fanout-reader", registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE); err != nil {
		return nil, err
	}
	progress("herald: starting the router (%s) on %s", o.RouterBin, h.common.RouterAddr)
	if h.router, err = startChild("router", o.RouterBin, nil, routerEnv(h.common, o.RouterEnv), filepath.Join(dir, "router.log")); err != nil {
		return nil, err
	}
	if err := waitChild(ctx, h.router, h.common.RouterAddr); err != nil {
		return nil, err
	}
	if err := h.addEdge(ctx, 0); err != nil {
		return nil, err
	}
	if h.pub, err = newPublisher(h.common.RouterAddr, pubKey); err != nil {
		return nil, err
	}
	return h, nil
}

// registerFanType registers fanType, whose events carry what the SSE load
// clients time.
func registerFanType(ctx context.Context, reg registryv1connect.RegistryServiceClient) error {
	if _, err := reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: fanType, Description: "Fan-out benchmark tick.", Schema: fanSchema,
	}})); err != nil {
		return fmt.Errorf("register %s: %w", fanType, err)
	}
	return nil
}

// benchApp creates an application with one grant on "bench.*" and returns
// its key.
func benchApp(ctx context.Context, reg registryv1connect.RegistryServiceClient, name string, action registryv1.GrantAction) (string, error) {
	res, err := reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: name, Grants: []*registryv1.Grant{{Action: action, Pattern: "bench.*"}},
	}}))
	if err != nil {
		return "", fmt.Errorf("create application %s: %w", name, err)
	}
	return res.Msg.GetKey().GetSecret(), nil
}

// startEdge starts an edge process with common's settings plus extra, and
// waits until it is ready.
func startEdge(ctx context.Context, name, bin string, c config.Common, extra []string, logPath string) (*child, error) {
	ch, err := startChild(name, bin, nil, append(routerEnv(c, nil), extra...), logPath)
	if err != nil {
		return nil, err
	}
	if err := waitChild(ctx, ch, c.EdgeAddr); err != nil {
		return ch, err
	}
	return ch, nil
}

func (h *heraldFan) addEdge(ctx context.Context, i int) error {
	addr := h.common.EdgeAddr
	if i > 0 {
		var err error
		if addr, err = freeAddr(); err != nil {
			return err
		}
	}
	c := h.common
	c.EdgeAddr = addr
	name := "edge"
	if i > 0 {
		name = "edge-" + strconv.Itoa(i+1)
	}
	h.progress("herald: starting %s (%s) on %s", name, h.o.EdgeBin, addr)
	ch, err := startEdge(ctx, name, h.o.EdgeBin, c, h.o.EdgeEnv, filepath.Join(h.dir, name+".log"))
	if ch != nil {
		h.edges = append(h.edges, ch)
		h.addrs = append(h.addrs, addr)
	}
	return err
}

// fanEvent is a CloudEvent of fanType with JSON data.
func fanEvent(id string, data []byte) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id: id, Source: EventSource, SpecVersion: "1.0", Type: fanType,
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: string(data)},
	}
}

func (h *heraldFan) stream(i int) (string, map[string]string) {
	return "http://" + h.addrs[i] + "/v1/stream?types=" + fanType, map[string]string{"Authorization": "Bearer " + h.readKey}
}

func (h *heraldFan) maxBatch() int { return 1000 }

func (h *heraldFan) publish(ctx context.Context, data [][]byte) error {
	evs := make([]*eventv1.CloudEvent, len(data))
	for i, d := range data {
		evs[i] = fanEvent("fan-"+strconv.FormatInt(h.ev.Add(1), 10), d)
	}
	_, err := h.pub.publish(ctx, evs, false)
	return err
}

func (h *heraldFan) pids(i int) []int { return []int{h.edges[i].pid()} }

func (h *heraldFan) version() string { return "(this build; " + h.redisVer + ")" }

func (h *heraldFan) path() string {
	return "gRPC Publish → router → Redis stream (AOF appendfsync " + h.o.RedisFsync + ") → edge hub → SSE (HTTP/1.1)"
}

func (h *heraldFan) withLogs(err error) error {
	return withChildLogs(err, append(slices.Clip(h.edges), h.router)...)
}

func (h *heraldFan) close() {
	if h.pub != nil {
		h.pub.Close()
	}
	for _, e := range h.edges {
		e.stop(20 * time.Second)
	}
	if h.router != nil {
		h.router.stop(10 * time.Second)
	}
	if h.stopReg != nil {
		h.stopReg()
	}
	if h.rdb != nil {
		h.rdb.Close()
	}
	if h.srv != nil {
		_ = h.srv.Stop()
	}
}
