package redisserver_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/freeport"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/redis/go-redis/v9"
)

func TestClusterFailover(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	c, err := redisserver.StartCluster(ctx, redisserver.ClusterOptions{Dir: t.TempDir(), Masters: 3, Replicas: 1, AppendOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Kill()
	t.Logf("3 masters and 3 replicas in %v", time.Since(start).Round(time.Millisecond))
	rdb := c.Client()
	defer rdb.Close()
	for i := range 100 {
		k := fmt.Sprintf("k%d", i)
		if got := redisserver.Slot(k); got != uint16(rdb.ClusterKeySlot(ctx, k).Val()) {
			t.Fatalf("Slot(%q) = %d, CLUSTER KEYSLOT %d", k, got, rdb.ClusterKeySlot(ctx, k).Val())
		}
	}
	if got, want := redisserver.Slot("herald:log:{a.b}"), uint16(rdb.ClusterKeySlot(ctx, "x{a.b}").Val()); got != want {
		t.Fatalf("hash tag: %d, want %d", got, want)
	}
	// The write and a WAIT for its replica on the master's own connection
	// (WAIT counts its connection's writes; a keyless WAIT through the
	// cluster client would go to any node).
	mc, err := rdb.MasterForKey(ctx, "{s}k")
	if err != nil {
		t.Fatal(err)
	}
	pipe := mc.Pipeline()
	pipe.Set(ctx, "{s}k", "v", 0)
	wait := pipe.Do(ctx, "wait", 1, 5000)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("SET and WAIT 1: %v", err)
	}
	if n, _ := wait.Int(); n != 1 {
		t.Fatalf("WAIT 1: %d replicas acknowledged", n)
	}
	m, err := c.MasterOf(ctx, "{s}k")
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	m.Kill()
	for {
		v, err := rdb.Get(ctx, "{s}k").Result()
		if errors.Is(err, redis.Nil) {
			t.Fatal("the promoted replica does not have the key its master had replicated")
		}
		if err == nil {
			if v != "v" {
				t.Fatalf("got %q", v)
			}
			break
		}
		if time.Since(killed) > 30*time.Second {
			for _, s := range c.Nodes {
				if s.Running() {
					r := redis.NewClient(&redis.Options{Addr: s.Addr()})
					t.Logf("CLUSTER NODES from %s:\n%s", s.Addr(), r.ClusterNodes(ctx).Val())
					r.Close()
					log, _ := os.ReadFile(filepath.Join(s.Dir(), "redis.log"))
					if len(log) > 3000 {
						log = log[len(log)-3000:]
					}
					t.Logf("log of %s:\n%s", s.Addr(), log)
				}
			}
			t.Fatal("no replica took over within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("replica promoted, key readable %v after the kill", time.Since(killed).Round(time.Millisecond))
}

// A cluster of fewer than three masters (which redis-cli refuses to
// create) is joined by hand: every slot served, each replica following its
// master; a restart of the same directory reuses it with its data.
func TestClusterOfTwoMastersAndRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// Given ports (with Redis' default bus ports, port+10000), as
	// `herald dev --cluster` gives them: a restart finds the nodes there.
	var ports []int
	for len(ports) < 4 {
		p, err := freeport.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if freeport.Free(p+10000) && !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	c, err := redisserver.StartCluster(ctx, redisserver.ClusterOptions{Dir: dir, Masters: 2, Replicas: 1, AppendOnly: true, Ports: ports})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Kill()
	if c.Reused {
		t.Error("a new cluster reported as reused")
	}
	rdb := c.Client()
	slots, err := rdb.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	masters := map[string]bool{}
	served := 0
	for _, r := range slots {
		masters[r.Nodes[0].Addr] = true
		served += r.End - r.Start + 1
	}
	if len(masters) != 2 || served != 16384 {
		t.Fatalf("slots: %+v", slots)
	}
	for i := range 20 {
		if err := rdb.Set(ctx, fmt.Sprintf("k%d", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	rdb.Close()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	again, err := redisserver.StartCluster(ctx, redisserver.ClusterOptions{Dir: dir, Masters: 2, Replicas: 1, AppendOnly: true, Ports: ports})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Kill()
	if !again.Reused {
		t.Error("the restart created a new cluster")
	}
	rdb = again.Client()
	defer rdb.Close()
	for i := range 20 {
		if v, err := rdb.Get(ctx, fmt.Sprintf("k%d", i)).Int(); err != nil || v != i {
			t.Fatalf("k%d after the restart: %v %v", i, v, err)
		}
	}
}
