package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/metadata"
)

// ReplicaAcksVar is the router setting that makes it wait for a replica's
// acknowledgement of each append before it acknowledges a publish.
const ReplicaAcksVar = "HERALD_REDIS_REPLICA_ACKS"

// FailoverOptions configure `herald bench failover`.
type FailoverOptions struct {
	// NodeTimeout is the cluster's cluster-node-timeout: how long a master
	// may be unreachable before its replica takes over. Default 2s.
	NodeTimeout time.Duration
	// Callers per shard, each publishing Batch events per call in a loop.
	// Default 2.
	Callers int
	// Batch is the events per call. Default 10.
	Batch int
	// Before and After are how long the callers publish before the kill
	// and after the shard accepts publishes again. Default 3s each.
	Before, After time.Duration
	// PayloadBytes is the size of each event's JSON data. Default 256.
	PayloadBytes int
	// NoRestart leaves the killed node dead. By default it is restarted
	// once its replica is master, and rejoins as the new master's replica
	// (with one replica per master, the promoted one has none until then,
	// so a router waiting for a replica's acknowledgement cannot accept).
	NoRestart bool
	// NoReplicaAcks leaves ReplicaAcksVar unset (the router acknowledges
	// once the master has the event).
	NoReplicaAcks bool
	// RouterBin is the router executable. Required.
	RouterBin string
	// RouterEnv is added to the router's environment.
	RouterEnv []string
	// Timeout bounds the whole run. Default 5 minutes.
	Timeout time.Duration
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// FailoverReport is the outcome of `herald bench failover`.
type FailoverReport struct {
	Machine  Machine          `json:"machine"`
	Settings FailoverSettings `json:"settings"`
	// Killed is the master killed with SIGKILL, and Type the event type
	// whose stream it served.
	Killed string `json:"killed_master"`
	Type   string `json:"type"`
	// FailoverSeconds runs from the kill to the first accepted publish of
	// Type by a call started after the kill.
	FailoverSeconds float64 `json:"failover_seconds"`
	// PromotedSeconds runs from the kill to the moment the killed
	// master's replica answers ROLE as a master (0: not seen).
	PromotedSeconds float64 `json:"promoted_seconds"`
	// RestartedSeconds runs from the kill to the killed node's restart
	// (after the promotion; it rejoins as a replica). 0 with NoRestart.
	RestartedSeconds float64 `json:"restarted_seconds,omitempty"`
	// OtherMaxGapSeconds is the longest time without an accepted publish
	// on the other shards, from the kill to the end.
	OtherMaxGapSeconds float64 `json:"other_shards_max_gap_seconds"`
	// FailedCalls are the publish calls that failed (and were retried).
	FailedCalls int      `json:"failed_calls"`
	Acked       int      `json:"acknowledged_events"`
	Checks      []Check  `json:"checks"`
	Notes       []string `json:"notes,omitempty"`
}

// FailoverSettings are the options the run used.
type FailoverSettings struct {
	NodeTimeout string `json:"cluster_node_timeout"`
	Callers     int    `json:"callers_per_shard"`
	Batch       int    `json:"batch"`
	ReplicaAcks string `json:"replica_acks"`
	Redis       string `json:"redis"`
}

func (o *FailoverOptions) defaults() error {
	if o.NodeTimeout <= 0 {
		o.NodeTimeout = 2 * time.Second
	}
	if o.Callers <= 0 {
		o.Callers = 2
	}
	if o.Batch <= 0 {
		o.Batch = 10
	}
	if o.Before <= 0 {
		o.Before = 3 * time.Second
	}
	if o.After <= 0 {
		o.After = 3 * time.Second
	}
	if o.PayloadBytes <= 0 {
		o.PayloadBytes = 256
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.RouterBin == "" {
		return errors.New("no router executable given")
	}
	return nil
}

// shardLoad is what the callers of one type record.
type shardLoad struct {
	mu       sync.Mutex
	acked    map[string]bool // event ids acknowledged
	times    []time.Time     // when each accepted call returned
	firstNew time.Time       // first accepted call started after the kill
	failed   int
	lastErr  string // of the last failed call
}

// RunFailover publishes to three shards of a cluster of three masters with
// one replica each, kills one master with SIGKILL mid-publish, and reports
// the time to the first accepted publish on that shard and whether every
// acknowledged event is in the log once.
func RunFailover(parent context.Context, o FailoverOptions) (*FailoverReport, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	progress := func(format string, args ...any) { fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...) }
	rep := &FailoverReport{Machine: machine(), Settings: FailoverSettings{NodeTimeout: o.NodeTimeout.String(), Callers: o.Callers, Batch: o.Batch}}
	dir, err := os.MkdirTemp("", "herald-bench-failover-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	progress("starting a Redis Cluster: 3 masters, 1 replica each (AOF, appendfsync always, cluster-node-timeout %v)", o.NodeTimeout)
	c, err := redisserver.StartCluster(ctx, redisserver.ClusterOptions{Dir: filepath.Join(dir, "redis"), Masters: 3, Replicas: 1, AppendOnly: true, NodeTimeout: o.NodeTimeout})
	if err != nil {
		return nil, err
	}
	defer c.Stop()
	rdb := c.Client()
	defer rdb.Close()
	if info, err := rdb.Info(ctx, "server").Result(); err == nil {
		rep.Settings.Redis = "redis-server " + infoField(info, "redis_version")
	}
	types, _, err := clusterTypes(ctx, rdb, 3)
	if err != nil {
		return nil, err
	}
	common, p, stopRegistry, err := startClusterMesh(ctx, dir, c.URL(), types, progress)
	if err != nil {
		return nil, err
	}
	defer stopRegistry()
	env := o.RouterEnv
	rep.Settings.ReplicaAcks = "off (" + ReplicaAcksVar + " unset)"
	if !o.NoReplicaAcks {
		env = append(slices.Clone(env), ReplicaAcksVar+"=1")
		rep.Settings.ReplicaAcks = ReplicaAcksVar + "=1"
	}
	routers, pubs, err := startRouters(ctx, ClusterOptions{Routers: 1, RouterBin: o.RouterBin, RouterEnv: env}, common, p.key, dir, progress)
	defer func() {
		for _, pb := range pubs {
			pb.Close()
		}
		for _, r := range routers {
			r.stop(15 * time.Second)
		}
	}()
	if err != nil {
		return nil, err
	}
	if !o.NoReplicaAcks {
		time.Sleep(200 * time.Millisecond) // the router logs unknown settings at start
		if ignored(routers[0].logTail(), ReplicaAcksVar) {
			rep.Settings.ReplicaAcks += ", but this router does not know it (it acknowledges once the master has the event)"
			rep.Notes = append(rep.Notes, "the router ignored "+ReplicaAcksVar+": acknowledged events may be lost with the master")
		}
	}

	// The callers: each publishes batches of its type's events in a loop,
	// retrying a failed batch (same ids: a retry of an applied batch is
	// answered duplicate=true) until stopped.
	loads := make([]*shardLoad, len(types))
	var killAt time.Time
	var killMu sync.RWMutex
	pubCtx, stopPub := context.WithCancel(ctx)
	defer stopPub()
	var wg sync.WaitGroup
	for k, t := range types {
		loads[k] = &shardLoad{acked: map[string]bool{}}
		for w := range o.Callers {
			wg.Go(func() { failoverCaller(pubCtx, pubs[0], p.key, t, w, o, loads[k], &killMu, &killAt) })
		}
	}
	progress("publishing to %s (%d callers each, %d events per call) for %v", strings.Join(types, ", "), o.Callers, o.Batch, o.Before)
	sleepCtx(ctx, o.Before)
	victim, err := c.MasterOf(ctx, eventlog.StreamKey(types[0]))
	if err != nil {
		return nil, err
	}
	rep.Killed, rep.Type = victim.Addr(), types[0]
	replica := replicaOf(ctx, c, victim)
	killMu.Lock()
	killAt = time.Now()
	victim.Kill()
	killMu.Unlock()
	progress("killed the master of %s (%s) with SIGKILL", types[0], victim.Addr())
	promoted := make(chan time.Duration, 1)
	go func() { promoted <- waitPromoted(pubCtx, replica, killAt) }()
	l := loads[0]
	deadline := time.Now().Add(60 * time.Second)
	for {
		l.mu.Lock()
		first, lastErr := l.firstNew, l.lastErr
		l.mu.Unlock()
		if !first.IsZero() {
			rep.FailoverSeconds = first.Sub(killAt).Seconds()
			progress("%s accepts publishes again after %.2fs", types[0], rep.FailoverSeconds)
			break
		}
		select {
		case d := <-promoted:
			rep.PromotedSeconds = d.Seconds()
			progress("the replica %s is master after %.2fs", replica, rep.PromotedSeconds)
			if !o.NoRestart {
				// As an operator would: the dead node comes back, and
				// rejoins as the new master's replica.
				if err := victim.Restart(ctx); err != nil {
					return rep, fmt.Errorf("restart the killed master: %w", err)
				}
				rep.RestartedSeconds = time.Since(killAt).Seconds()
				progress("restarted the killed node after %.2fs", rep.RestartedSeconds)
			}
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stopPub()
			wg.Wait()
			return rep, withChildLogs(fmt.Errorf("no publish of %s accepted within 60s of the kill; the last refusal: %s", types[0], lastErr), routers...)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sleepCtx(ctx, o.After)
	stopPub()
	wg.Wait()

	for _, l := range loads[1:] {
		gap := maxGapAfter(l.times, killAt)
		rep.OtherMaxGapSeconds = max(rep.OtherMaxGapSeconds, gap.Seconds())
	}
	for _, l := range loads {
		rep.FailedCalls += l.failed
		rep.Acked += len(l.acked)
	}
	progress("checking the log")
	if err := c.WaitHealthy(ctx, 30*time.Second); err != nil {
		return rep, err
	}
	for k, t := range types {
		count, err := logIDs(ctx, rdb, eventlog.StreamKey(t))
		if err != nil {
			return rep, err
		}
		lost, twice := 0, 0
		for id := range loads[k].acked {
			switch count[id] {
			case 0:
				lost++
			case 1:
			default:
				twice++
			}
		}
		name := "the shard that lost its master"
		if k > 0 {
			name = "another shard"
		}
		rep.Checks = append(rep.Checks, Check{Name: fmt.Sprintf("%s (%s): every acknowledged event in the log once", t, name), OK: lost == 0 && twice == 0,
			Detail: fmt.Sprintf("%d acknowledged, %d in the log, %d lost, %d more than once", len(loads[k].acked), len(count), lost, twice)})
	}
	rep.Machine.LoadAvgEnd = loadAvg()
	for _, ch := range rep.Checks {
		if !ch.OK {
			return rep, ErrCheckFailed
		}
	}
	return rep, nil
}

// replicaOf returns the address of the node replicating master, or "".
func replicaOf(ctx context.Context, c *redisserver.Cluster, master *redisserver.Server) string {
	_, port, _ := strings.Cut(master.Addr(), ":")
	for _, s := range c.Nodes {
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
		info, err := rdb.Info(ctx, "replication").Result()
		rdb.Close()
		if err == nil && infoField(info, "role") == "slave" && infoField(info, "master_port") == port {
			return s.Addr()
		}
	}
	return ""
}

// waitPromoted polls the replica until it is a master, and returns the
// time since the kill (0 if ctx ends first).
func waitPromoted(ctx context.Context, addr string, killAt time.Time) time.Duration {
	if addr == "" {
		return 0
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	for ctx.Err() == nil {
		if info, err := rdb.Info(ctx, "replication").Result(); err == nil && infoField(info, "role") == "master" {
			return time.Since(killAt)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0
}

// failoverCaller publishes batches of type t until ctx ends.
func failoverCaller(ctx context.Context, pub *publisher, key, t string, w int, o FailoverOptions, l *shardLoad, killMu *sync.RWMutex, killAt *time.Time) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	for seq := 0; ctx.Err() == nil; seq++ {
		evs := makeEvents(fmt.Sprintf("%s-w%d-b%d", t, w, seq), o.Batch, o.PayloadBytes)
		for _, e := range evs {
			e.Type = t
		}
		for ctx.Err() == nil {
			killMu.RLock()
			afterKill := !killAt.IsZero()
			killMu.RUnlock()
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			res, err := pub.client.Publish(cctx, &routerv1.PublishRequest{Events: evs})
			cancel()
			if err == nil && acceptedAll(res) {
				now := time.Now()
				l.mu.Lock()
				for _, e := range evs {
					l.acked[e.GetId()] = true
				}
				l.times = append(l.times, now)
				if afterKill && l.firstNew.IsZero() {
					l.firstNew = now
				}
				l.mu.Unlock()
				break
			}
			if ctx.Err() != nil {
				return
			}
			why := fmt.Sprint(err)
			if err == nil {
				why = firstRefusal(res)
			}
			l.mu.Lock()
			l.failed++
			l.lastErr = why
			l.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// ignored reports whether a service's log says it ignored the variable.
func ignored(log, name string) bool {
	for line := range strings.SplitSeq(log, "\n") {
		if strings.Contains(line, "unknown HERALD_") && strings.Contains(line, `"`+name+`"`) {
			return true
		}
	}
	return false
}

// firstRefusal is the first event error of a Publish answer.
func firstRefusal(res *routerv1.PublishResponse) string {
	for _, r := range res.GetResults() {
		if e := r.GetError(); e != nil {
			return fmt.Sprintf("code %d: %s", e.GetCode(), e.GetMessage())
		}
	}
	return "no results"
}

// acceptedAll reports whether every event of a Publish answer was accepted
// (new or a duplicate of an accepted one).
func acceptedAll(res *routerv1.PublishResponse) bool {
	for _, r := range res.GetResults() {
		if r.GetError() != nil {
			return false
		}
	}
	return len(res.GetResults()) > 0
}

// maxGapAfter is the longest time between accepted calls from `from` on.
func maxGapAfter(times []time.Time, from time.Time) time.Duration {
	var gap time.Duration
	prev := from
	for _, t := range times {
		if t.Before(from) {
			continue
		}
		gap = max(gap, t.Sub(prev))
		prev = t
	}
	return gap
}

// logIDs counts the event ids in a stream.
func logIDs(ctx context.Context, rdb redis.Cmdable, stream string) (map[string]int, error) {
	count := map[string]int{}
	start := "-"
	for {
		msgs, err := rdb.XRangeN(ctx, stream, start, "+", 1000).Result()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			e, err := eventlog.Decode(stream, m)
			if err != nil {
				return nil, err
			}
			count[e.Event.GetId()]++
		}
		if len(msgs) < 1000 {
			return count, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// WriteJSON writes the report as indented JSON.
func (rep *FailoverReport) WriteJSON(w io.Writer) error { return writeJSON(w, rep) }

// WriteTable writes the report for people.
func (rep *FailoverReport) WriteTable(w io.Writer) error {
	s, m := rep.Settings, rep.Machine
	fmt.Fprintf(w, "herald bench failover: Redis Cluster of 3 masters with 1 replica each (AOF, appendfsync always, cluster-node-timeout %s), %d callers per shard, %d events per call; router replica acks: %s\n",
		s.NodeTimeout, s.Callers, s.Batch, s.ReplicaAcks)
	fmt.Fprintf(w, "machine: %d CPUs (%s), %d GiB, %s, %s; %s\n", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, s.Redis)
	fmt.Fprintf(w, "load average (1, 5, 15 min): %s at the start, %s at the end\n\n", m.LoadAvgStart, m.LoadAvgEnd)
	fmt.Fprintf(w, "killed the master of %s (%s) with SIGKILL mid-publish\n", rep.Type, rep.Killed)
	fmt.Fprintf(w, "  kill -> its replica promoted (ROLE master): %.2f s\n", rep.PromotedSeconds)
	if rep.RestartedSeconds > 0 {
		fmt.Fprintf(w, "  kill -> the killed node restarted (it rejoins as the new master's replica): %.2f s\n", rep.RestartedSeconds)
	}
	fmt.Fprintf(w, "  kill -> first accepted publish on that shard: %.2f s\n", rep.FailoverSeconds)
	fmt.Fprintf(w, "  longest pause of the other shards after the kill: %.3f s\n", rep.OtherMaxGapSeconds)
	fmt.Fprintf(w, "  failed (retried) calls: %d; events acknowledged: %d\n", rep.FailedCalls, rep.Acked)
	writeChecks(w, rep.Checks, rep.Notes)
	return nil
}
