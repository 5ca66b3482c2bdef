package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/freeport"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/durationpb"
)

// BridgeOptions configure `herald bench bridge`.
type BridgeOptions struct {
	// Systems to measure: kafka, amqp, mqtt, lake. Default all four.
	Systems []string
	// Events through each sink and source. Default 20000.
	Events int
	// PayloadBytes is each event's JSON data size. Default 256.
	PayloadBytes int
	// RouterBin and EdgeBin are the service binaries.
	RouterBin, EdgeBin string
	Progress           io.Writer
	// Timeout bounds the whole run. Default 10 minutes.
	Timeout time.Duration
}

func (o *BridgeOptions) defaults() error {
	if len(o.Systems) == 0 {
		o.Systems = []string{"kafka", "amqp", "mqtt", "lake"}
	}
	for _, s := range o.Systems {
		if !slices.Contains([]string{"kafka", "amqp", "mqtt", "lake"}, s) {
			return fmt.Errorf("--systems: %q is not kafka, amqp, mqtt or lake", s)
		}
	}
	if o.Events == 0 {
		o.Events = 20000
	}
	if o.Events < 100 || o.Events > 1_000_000 {
		return fmt.Errorf("--events is %d; give 100 to 1000000", o.Events)
	}
	if o.PayloadBytes == 0 {
		o.PayloadBytes = 256
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return nil
}

// BridgeReport is what `herald bench bridge` measured.
type BridgeReport struct {
	Machine Machine        `json:"machine"`
	Events  int            `json:"events"`
	Payload int            `json:"payload_bytes"`
	Results []BridgeResult `json:"results"`
	Checks  []Check        `json:"checks"`
	Notes   []string       `json:"notes,omitempty"`
}

// BridgeResult compares one sink or source with the system's own client
// driving the same broker with the same records in the same run.
type BridgeResult struct {
	System    string `json:"system"`
	Direction string `json:"direction"`
	// Herald is events/s through the bridge; Direct the system's own
	// client's records/s; Ratio Herald/Direct (target >= 0.5).
	Herald float64 `json:"herald_per_s"`
	Direct float64 `json:"direct_per_s"`
	Ratio  float64 `json:"ratio"`
	// What each side did.
	HeraldPath string `json:"herald_path"`
	DirectPath string `json:"direct_path"`
}

// WriteJSON writes the report as JSON.
func (rep *BridgeReport) WriteJSON(w io.Writer) error { return writeJSON(w, rep) }

// WriteTable writes the report for people.
func (rep *BridgeReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "bridges: %d events of about %d bytes each, on %d CPUs (%s); load %s -> %s\n\n",
		rep.Events, rep.Payload, rep.Machine.CPUs, rep.Machine.CPUModel, rep.Machine.LoadAvgStart, rep.Machine.LoadAvgEnd)
	fmt.Fprintf(w, "%-6s %-6s %12s %12s %7s  %s\n", "SYSTEM", "DIR", "HERALD/s", "DIRECT/s", "RATIO", "COMPARED")
	for _, r := range rep.Results {
		fmt.Fprintf(w, "%-6s %-6s %12.0f %12.0f %6.2fx  %s | %s\n", r.System, r.Direction, r.Herald, r.Direct, r.Ratio, r.HeraldPath, r.DirectPath)
	}
	writeChecks(w, rep.Checks, rep.Notes)
	return nil
}

type brRun struct {
	o        BridgeOptions
	rep      *BridgeReport
	progress func(string, ...any)
	rdb      *redis.Client
	reg      registryv1connect.RegistryServiceClient
	pub      *publisher
	appID    string
	dir      string
	router   *child
	edge     *child
}

// RunBridges measures every sink and source against the system's own
// client. It starts what it measures on 127.0.0.1 and stops it at the end:
// a redis-server, the registry in this process, the router and the edge as
// their own processes, an in-process Kafka (franz-go's kfake), a private
// rabbitmq-server and mosquitto.
func RunBridges(parent context.Context, o BridgeOptions) (*BridgeReport, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	r := &brRun{o: o, rep: &BridgeReport{Machine: machine(), Events: o.Events, Payload: o.PayloadBytes}}
	r.rep.Machine.LoadAvgStart = loadAvg()
	r.progress = func(format string, args ...any) { fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...) }
	dir, err := os.MkdirTemp("", "herald-bench-bridge-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	r.dir = dir
	err = r.all(ctx)
	r.rep.Machine.LoadAvgEnd = loadAvg()
	if err != nil {
		return r.rep, withChildLogs(err, r.router, r.edge)
	}
	for _, c := range r.rep.Checks {
		if !c.OK {
			return r.rep, ErrCheckFailed
		}
	}
	return r.rep, nil
}

func (r *brRun) check(name string, ok bool, format string, args ...any) {
	r.rep.Checks = append(r.rep.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

func (r *brRun) all(ctx context.Context) error {
	srv, rdb, version, err := startRedis(ctx, r.dir, "everysec", "", 8, 30*time.Second)
	if err != nil {
		return err
	}
	defer srv.Stop()
	r.rdb = rdb
	defer rdb.Close()
	r.rep.Machine.Redis = version
	common, err := benchMesh(srv.URL())
	if err != nil {
		return err
	}
	common.SecretKey = secretbox.NewKey()
	stopRegistry, err := startRegistryIn(ctx, r.dir, common, r.progress)
	if err != nil {
		return err
	}
	defer stopRegistry()
	r.reg = registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(common.AdminKey)...)
	app, err := r.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "bench-bridges", Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "bench.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "bench.*"},
		},
	}}))
	if err != nil {
		return fmt.Errorf("create the application: %w", err)
	}
	r.appID = app.Msg.GetApplication().GetId()
	env := append(routerEnv(common, nil), "HERALD_SECRET_KEY="+common.SecretKey)
	if r.router, err = startChild("router", r.o.RouterBin, nil, env, filepath.Join(r.dir, "router.log")); err != nil {
		return err
	}
	defer r.router.stop(10 * time.Second)
	if r.edge, err = startChild("edge", r.o.EdgeBin, nil, env, filepath.Join(r.dir, "edge.log")); err != nil {
		return err
	}
	defer r.edge.stop(20 * time.Second)
	if err := waitChild(ctx, r.router, common.RouterAddr); err != nil {
		return err
	}
	if err := waitChild(ctx, r.edge, common.EdgeAddr); err != nil {
		return err
	}
	if r.pub, err = newPublisher(common.RouterAddr, app.Msg.GetKey().GetSecret()); err != nil {
		return err
	}
	defer r.pub.Close()
	for _, s := range r.o.Systems {
		r.progress("measuring %s", s)
		var err error
		switch s {
		case "kafka":
			err = r.kafka(ctx)
		case "amqp":
			err = r.amqp(ctx)
		case "mqtt":
			err = r.mqtt(ctx)
		case "lake":
			err = r.lake(ctx)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// eventType registers a type of its own for a phase.
func (r *brRun) eventType(ctx context.Context, name string) error {
	_, err := r.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: name, Schema: Schema,
	}}))
	return err
}

// events are the phase's events, of its type.
func (r *brRun) events(typ, prefix string) []*eventv1.CloudEvent {
	evs := makeEvents(prefix, r.o.Events, r.o.PayloadBytes)
	for _, ev := range evs {
		ev.Type = typ
	}
	return evs
}

// publishAll publishes events into the log in batches of 500.
func (r *brRun) publishAll(ctx context.Context, evs []*eventv1.CloudEvent) error {
	for _, b := range batches(evs, 500) {
		if _, err := r.pub.publish(ctx, b, false); err != nil {
			return err
		}
	}
	return nil
}

// sink measures a sink: the events are in the log before the bridge
// exists; the clock runs from its creation (start cursor 0) until count
// reports them all at the far side.
func (r *brRun) sink(ctx context.Context, system, typ string, b *registryv1.Bridge, count func() int) (float64, error) {
	if err := r.eventType(ctx, typ); err != nil {
		return 0, err
	}
	if err := r.publishAll(ctx, r.events(typ, system+"-sink")); err != nil {
		return 0, err
	}
	b.Name, b.ApplicationId, b.Direction = system+"-sink", r.appID, registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK
	b.Sink = &registryv1.BridgeSink{Types: []string{typ}, Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}}, MaxInFlight: 10000}
	start := time.Now()
	res, err := r.reg.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: b}))
	if err != nil {
		return 0, fmt.Errorf("create the sink: %w", err)
	}
	defer r.reg.DeleteBridge(context.WithoutCancel(ctx), connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: res.Msg.GetBridge().GetId()}))
	if err := waitFor(ctx, 5*time.Minute, func() bool { return count() >= r.o.Events }); err != nil {
		return 0, fmt.Errorf("the far side has %d of %d events: %w", count(), r.o.Events, err)
	}
	el := time.Since(start)
	r.check(system+" sink delivered every event", count() >= r.o.Events, "%d of %d at the far side", count(), r.o.Events)
	return float64(r.o.Events) / el.Seconds(), nil
}

// source measures a source: feed puts the records in the far side (before
// the clock starts when early, else after the bridge runs, timed); the
// clock stops when the log holds them all.
func (r *brRun) source(ctx context.Context, system, typ string, b *registryv1.Bridge, feed func() error, early bool) (float64, error) {
	if err := r.eventType(ctx, typ); err != nil {
		return 0, err
	}
	if early {
		if err := feed(); err != nil {
			return 0, err
		}
	}
	b.Name, b.ApplicationId, b.Direction = system+"-source", r.appID, registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE
	b.Source = &registryv1.BridgeSource{EventType: typ, BatchSize: 500}
	start := time.Now()
	res, err := r.reg.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: b}))
	if err != nil {
		return 0, fmt.Errorf("create the source: %w", err)
	}
	defer r.reg.DeleteBridge(context.WithoutCancel(ctx), connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: res.Msg.GetBridge().GetId()}))
	if !early {
		// The source subscribes first (MQTT keeps nothing for a client
		// that has not subscribed yet).
		if err := waitFor(ctx, time.Minute, func() bool {
			n, _ := r.rdb.Exists(ctx, "herald:bridge:{"+res.Msg.GetBridge().GetId()+"}:lease").Result()
			return n == 1
		}); err != nil {
			return 0, errors.New("no edge runs the source")
		}
		time.Sleep(time.Second)
		start = time.Now()
		if err := feed(); err != nil {
			return 0, err
		}
	}
	stream := eventlog.StreamKeys(typ, 1)[0]
	logged := func() int { n, _ := r.rdb.XLen(ctx, stream).Result(); return int(n) }
	if err := waitFor(ctx, 5*time.Minute, func() bool { return logged() >= r.o.Events }); err != nil {
		return 0, fmt.Errorf("the log has %d of %d records: %w", logged(), r.o.Events, err)
	}
	el := time.Since(start)
	r.check(system+" source published every record once", logged() == r.o.Events, "%d events in the log for %d records", logged(), r.o.Events)
	return float64(r.o.Events) / el.Seconds(), nil
}

func (r *brRun) result(system, dir string, herald, direct float64, hp, dp string) {
	res := BridgeResult{System: system, Direction: dir, Herald: herald, Direct: direct, HeraldPath: hp, DirectPath: dp}
	if direct > 0 {
		res.Ratio = herald / direct
	}
	r.rep.Results = append(r.rep.Results, res)
	r.progress("%s %s: herald %.0f/s, direct %.0f/s (%.2fx)", system, dir, herald, direct, res.Ratio)
}

// records are the phase's events as the sink puts them in the binary mode
// of a binding: attributes as headers, data as the payload.
func (r *brRun) records(typ, prefix string) []cloudevent.Binary {
	evs := r.events(typ, prefix)
	out := make([]cloudevent.Binary, len(evs))
	for i, ev := range evs {
		out[i] = cloudevent.ToBinary(ev)
	}
	return out
}

func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

func freePort() (int, error) { return freeport.Pick() }

// kafka compares the Kafka sink with a franz-go producer (acks=all,
// idempotent) and the source with a franz-go group consumer committing
// each poll, on one in-process kfake broker.
func (r *brRun) kafka(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	cluster, err := kfake.NewCluster(kfake.Ports(port), kfake.NumBrokers(1), kfake.SeedTopics(1, "sink-herald", "sink-direct", "source-herald", "source-direct"))
	if err != nil {
		return err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	counter := func(topic string) (func() int, func(), error) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			return nil, nil, err
		}
		var n atomic.Int64
		cctx, cancel := context.WithCancel(ctx)
		go func() {
			for cctx.Err() == nil {
				n.Add(int64(cl.PollFetches(cctx).NumRecords()))
			}
		}()
		return func() int { return int(n.Load()) }, func() { cancel(); cl.Close() }, nil
	}
	count, stop, err := counter("sink-herald")
	if err != nil {
		return err
	}
	herald, err := r.sink(ctx, "kafka", "bench.bridge.kafka", &registryv1.Bridge{System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: brokers, Topic: "sink-herald"}}}, count)
	stop()
	if err != nil {
		return err
	}
	produce := func(topic string, recs []cloudevent.Binary) (time.Duration, error) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.RequiredAcks(kgo.AllISRAcks()))
		if err != nil {
			return 0, err
		}
		defer cl.Close()
		start := time.Now()
		errc := make(chan error, 1)
		for _, b := range recs {
			rec := &kgo.Record{Key: []byte(b.Attributes["id"]), Value: b.Body, Headers: kafkaHeaders(b)}
			cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
				if err != nil {
					select {
					case errc <- err:
					default:
					}
				}
			})
		}
		if err := cl.Flush(ctx); err != nil {
			return 0, err
		}
		select {
		case err := <-errc:
			return 0, err
		default:
		}
		return time.Since(start), nil
	}
	el, err := produce("sink-direct", r.records("bench.bridge.kafka", "kafka-direct"))
	if err != nil {
		return err
	}
	r.result("kafka", "sink", herald, float64(r.o.Events)/el.Seconds(), "log -> edge sink -> kafka (acks=all)", "franz-go producer, acks=all")

	feed := func(topic string) func() error {
		return func() error {
			_, err := produce(topic, r.records("bench.bridge.kafka.in", "kafka-in-"+topic))
			return err
		}
	}
	herald, err = r.source(ctx, "kafka", "bench.bridge.kafka.in", &registryv1.Bridge{System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: brokers, Topic: "source-herald"}}}, feed("source-herald"), true)
	if err != nil {
		return err
	}
	if err := feed("source-direct")(); err != nil {
		return err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("source-direct"), kgo.ConsumerGroup("bench-direct"),
		kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return err
	}
	defer cl.Close()
	start, n := time.Now(), 0
	for n < r.o.Events && ctx.Err() == nil {
		f := cl.PollRecords(ctx, 500)
		recs := f.Records()
		n += len(recs)
		if err := cl.CommitRecords(ctx, recs...); err != nil {
			return err
		}
	}
	r.result("kafka", "source", herald, float64(n)/time.Since(start).Seconds(), "kafka -> edge source -> router Publish (validated, deduplicated, in the log)", "franz-go group consumer committing each poll")
	return nil
}

func kafkaHeaders(b cloudevent.Binary) []kgo.RecordHeader {
	h := make([]kgo.RecordHeader, 0, len(b.Attributes)+1)
	for k, v := range b.Attributes {
		h = append(h, kgo.RecordHeader{Key: "ce_" + k, Value: []byte(v)})
	}
	if b.ContentType != "" {
		h = append(h, kgo.RecordHeader{Key: "content-type", Value: []byte(b.ContentType)})
	}
	return h
}

// lake compares the lake sink with parquet rows written directly.
func (r *brRun) lake(ctx context.Context) error {
	dir := filepath.Join(r.dir, "lake")
	count := func() int { return lakeRows(dir) }
	herald, err := r.sink(ctx, "lake", "bench.bridge.lake", &registryv1.Bridge{System: &registryv1.Bridge_Lake{Lake: &registryv1.LakeBridge{Directory: dir, MaxFileBytes: 1 << 20, MaxFileAge: durationpb.New(time.Second)}}}, count)
	if err != nil {
		return err
	}
	el, err := lakeDirect(filepath.Join(r.dir, "lake-direct"), r.events("bench.bridge.lake", "lake-direct"))
	if err != nil {
		return err
	}
	r.result("lake", "sink", herald, float64(r.o.Events)/el.Seconds(), "log -> edge sink -> Parquet files (1 MiB, committed by rename)", "parquet-go writer, same rows, one file")
	return nil
}

// mosquitto runs a private mosquitto until stop.
func startMosquitto(dir string) (addr string, stop func(), err error) {
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_queued_messages 0\n", port, dir)
	if os.Geteuid() == 0 {
		body += "user root\n" // else it switches to a user that cannot write dir
	}
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return "", nil, err
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start mosquitto (apt-get install mosquitto): %w", err)
	}
	addr = "127.0.0.1:" + strconv.Itoa(port)
	stop = func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	if err := waitFor(context.Background(), 10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		stop()
		return "", nil, errors.New("mosquitto did not listen")
	}
	return addr, stop, nil
}

// rabbit runs a private rabbitmq-server until stop.
func startRabbit(dir string) (url string, stop func(), err error) {
	s, err := testutil.StartRabbitMQ(dir)
	if err != nil {
		return "", nil, err
	}
	return s.URL(), s.Close, nil
}
