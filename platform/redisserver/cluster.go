package redisserver

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterOptions configure a local Redis Cluster.
type ClusterOptions struct {
	// Dir holds one directory per node (node-0, node-1, ...). Required.
	Dir string
	// Masters is the number of shards. Default 3.
	Masters int
	// Replicas per master. Default 0; 1 makes every shard survive the loss
	// of its master.
	Replicas int
	// Ports of the nodes, masters first; missing ones are picked free.
	Ports []int
	// AppendOnly, NodeTimeout: as Options' AppendOnly and ClusterNodeTimeout.
	AppendOnly  bool
	NodeTimeout time.Duration
	// Env adds to the environment of node i (e.g. libfaketime for one
	// master's clock).
	Env map[int][]string
}

// Cluster is a running local Redis Cluster: Debian's redis-server nodes
// joined with `redis-cli --cluster create`.
type Cluster struct {
	Nodes []*Server
	// Reused says the nodes already formed a cluster (a restart of the
	// same Dir): StartCluster did not create it.
	Reused bool
	opts   ClusterOptions
}

// StartCluster starts the nodes, creates the cluster and waits until every
// node sees it whole (all slots served, every replica in sync with its
// master). A restart of the same Dir finds the cluster in the nodes' nodes.conf.
func StartCluster(ctx context.Context, o ClusterOptions) (*Cluster, error) {
	if o.Masters <= 0 {
		o.Masters = 3
	}
	if o.Replicas < 0 {
		o.Replicas = 0
	}
	if o.Dir == "" {
		return nil, errors.New("redisserver: ClusterOptions.Dir is required")
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, errors.New("redis-cli is not installed (Debian/Ubuntu: apt-get install redis-tools)")
	}
	n := o.Masters * (1 + o.Replicas)
	c := &Cluster{opts: o}
	for i := range n {
		no := Options{Dir: filepath.Join(o.Dir, fmt.Sprintf("node-%d", i)), AppendOnly: o.AppendOnly,
			Cluster: true, ClusterNodeTimeout: o.NodeTimeout, Env: o.Env[i]}
		if i < len(o.Ports) {
			no.Port = o.Ports[i]
		}
		s, err := Start(ctx, no)
		if err != nil {
			c.Kill()
			return nil, err
		}
		c.Nodes = append(c.Nodes, s)
	}
	created, err := c.created(ctx)
	if err != nil {
		c.Kill()
		return nil, err
	}
	c.Reused = created
	if !created && o.Masters < 3 {
		// redis-cli refuses fewer than three masters: join them by hand.
		if err := c.create(ctx); err != nil {
			c.Kill()
			return nil, err
		}
	} else if !created {
		args := []string{"--cluster", "create"}
		for _, s := range c.Nodes {
			args = append(args, s.Addr())
		}
		args = append(args, "--cluster-replicas", strconv.Itoa(o.Replicas), "--cluster-yes")
		out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
		if err != nil {
			c.Kill()
			return nil, fmt.Errorf("redisserver: redis-cli --cluster create: %w\n%s", err, tail(out, 2000))
		}
	}
	if err := c.WaitHealthy(ctx, 30*time.Second); err != nil {
		c.Kill()
		return nil, err
	}
	return c, nil
}

// create joins the nodes into a cluster as redis-cli --cluster create
// does, for the sizes it refuses (one or two masters): each master claims
// an even share of the slots, every node meets the first, and the replicas
// of master i are nodes Masters+i*Replicas...
func (c *Cluster) create(ctx context.Context) error {
	m := c.opts.Masters
	ids := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
		id, err := rdb.Do(ctx, "CLUSTER", "MYID").Text()
		if err == nil && i < m {
			err = rdb.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", i*16384/m, (i+1)*16384/m-1).Err()
		}
		if err == nil && i > 0 {
			first := c.Nodes[0]
			host, port, _ := strings.Cut(first.Addr(), ":")
			bus := first.opts.ClusterPort
			if bus == 0 {
				bus = first.opts.Port + 10000
			}
			err = rdb.Do(ctx, "CLUSTER", "MEET", host, port, bus).Err()
		}
		rdb.Close()
		if err != nil {
			return fmt.Errorf("redisserver: create cluster on %s: %w", s.Addr(), err)
		}
		ids[i] = id
	}
	for i := m; i < len(c.Nodes); i++ {
		master := ids[(i-m)/max(1, c.opts.Replicas)]
		rdb := redis.NewClient(&redis.Options{Addr: c.Nodes[i].Addr(), MaxRetries: -1})
		var err error
		for range 200 { // until the replica has heard of its master
			if err = rdb.Do(ctx, "CLUSTER", "REPLICATE", master).Err(); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		rdb.Close()
		if err != nil {
			return fmt.Errorf("redisserver: cluster replicate on %s: %w", c.Nodes[i].Addr(), err)
		}
	}
	return nil
}

// created reports whether the nodes already form a cluster (a restart).
func (c *Cluster) created(ctx context.Context) (bool, error) {
	rdb := redis.NewClient(&redis.Options{Addr: c.Nodes[0].Addr(), MaxRetries: -1})
	defer rdb.Close()
	info, err := rdb.ClusterInfo(ctx).Result()
	if err != nil {
		return false, fmt.Errorf("redisserver: cluster info: %w", err)
	}
	return !strings.Contains(info, "cluster_slots_assigned:0\r"), nil
}

// WaitHealthy waits until every running node reports cluster_state:ok with
// all 16384 slots served, and every running replica's link to its master is
// up and caught up.
func (c *Cluster) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var why string
	for {
		why = c.unhealthy(ctx)
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redisserver: cluster not healthy after %v: %s", timeout, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) unhealthy(ctx context.Context) string {
	masters := 0
	for _, s := range c.Nodes {
		if !s.Running() {
			continue
		}
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
		info, err := rdb.ClusterInfo(ctx).Result()
		if err != nil {
			rdb.Close()
			return s.Addr() + ": " + err.Error()
		}
		if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			rdb.Close()
			return s.Addr() + ": cluster state not ok"
		}
		repl, err := rdb.Info(ctx, "replication").Result()
		rdb.Close()
		if err != nil {
			return s.Addr() + ": " + err.Error()
		}
		if strings.Contains(repl, "role:master") {
			masters++
			continue
		}
		if !strings.Contains(repl, "master_link_status:up") || strings.Contains(repl, "master_sync_in_progress:1") {
			return s.Addr() + ": replica not in sync"
		}
	}
	if masters < c.opts.Masters {
		return fmt.Sprintf("%d of %d masters", masters, c.opts.Masters)
	}
	return ""
}

// Addrs are the nodes' host:port, masters of the creation first.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		out[i] = s.Addr()
	}
	return out
}

// URL is the HERALD_REDIS_URL of the cluster: redis+cluster://a,b,c.
func (c *Cluster) URL() string { return "redis+cluster://" + strings.Join(c.Addrs(), ",") }

// Client returns a cluster client of the nodes (the caller closes it).
func (c *Cluster) Client() *redis.ClusterClient {
	// A topology reload every second: go-redis reloads at once on MOVED and
	// ASK, but a dead master answers neither, and by default it would keep
	// dialing it for up to a minute after its replica took over.
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Second})
}

// MasterOf returns the running node that serves key's slot as master.
func (c *Cluster) MasterOf(ctx context.Context, key string) (*Server, error) {
	rdb := c.Client()
	defer rdb.Close()
	slot := Slot(key)
	slots, err := rdb.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("redisserver: cluster slots: %w", err)
	}
	for _, r := range slots {
		if int(slot) >= r.Start && int(slot) <= r.End && len(r.Nodes) > 0 {
			for _, s := range c.Nodes {
				if s.Addr() == r.Nodes[0].Addr {
					return s, nil
				}
			}
		}
	}
	return nil, fmt.Errorf("redisserver: no master serves slot %d", slot)
}

// Stop stops every node gracefully.
func (c *Cluster) Stop() error {
	var errs []error
	for _, s := range c.Nodes {
		errs = append(errs, s.Stop())
	}
	return errors.Join(errs...)
}

// Kill ends every node with SIGKILL.
func (c *Cluster) Kill() {
	for _, s := range c.Nodes {
		s.Kill()
	}
}

// Slot is the Redis Cluster hash slot of a key (CRC16 of its hash tag, or
// of the whole key, mod 16384), as CLUSTER KEYSLOT computes it.
func Slot(key string) uint16 { return crc16(HashTag(key)) % 16384 }

// HashTag is what Redis Cluster hashes of a key: the text between its first
// '{' and the next '}' when that is not empty, else the whole key. Keys of
// one tag are in one slot.
func HashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021), the one Redis Cluster uses.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
