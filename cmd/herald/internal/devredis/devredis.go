// Package devredis gives `herald dev` a Redis of its own: redis-server under
// ./var with AOF and appendfsync always, installed from Debian's packages
// when it is missing and we are root.
package devredis

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/heraldmesh/herald/platform/redisserver"
)

// Ensure makes sure redis-server is installed, installing it with apt-get
// when possible.
func Ensure(ctx context.Context, out io.Writer) error {
	if _, err := exec.LookPath("redis-server"); err == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install redis-server), or point HERALD_REDIS_URL at a Redis 7 server")
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return errors.New("redis-server is not installed and there is no apt-get: install Redis 7, or point HERALD_REDIS_URL at one")
	}
	fmt.Fprintln(out, "herald: redis-server is missing; installing Debian's redis-server with apt-get...")
	for _, args := range [][]string{{"update"}, {"install", "-y", "--no-install-recommends", "redis-server"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("apt-get %v: %w", args, err)
		}
	}
	return nil
}

// Start runs redis-server in dir on 127.0.0.1:port with AOF.
func Start(ctx context.Context, dir string, port int, out io.Writer) (*redisserver.Server, error) {
	if err := Ensure(ctx, out); err != nil {
		return nil, err
	}
	return redisserver.Start(ctx, redisserver.Options{Dir: dir, Port: port, AppendOnly: true})
}

// Cluster sizes of `herald dev --cluster`.
const (
	ClusterMasters  = 3
	ClusterReplicas = 1 // per master
)

// ClusterPorts are the ports of the dev cluster's nodes: the six after
// port (masters first), fixed so that a restart finds the same cluster.
func ClusterPorts(port int) []int {
	ports := make([]int, ClusterMasters*(1+ClusterReplicas))
	for i := range ports {
		ports[i] = port + 1 + i
	}
	return ports
}

// StartCluster runs a Redis Cluster of three masters and three replicas in
// dir (node-0 ... node-5, AOF with appendfsync always) on ClusterPorts(port).
// A restart of the same dir finds the cluster the first run created.
func StartCluster(ctx context.Context, dir string, port int, out io.Writer) (*redisserver.Cluster, error) {
	if err := Ensure(ctx, out); err != nil {
		return nil, err
	}
	c, err := redisserver.StartCluster(ctx, redisserver.ClusterOptions{
		Dir: dir, Masters: ClusterMasters, Replicas: ClusterReplicas, Ports: ClusterPorts(port), AppendOnly: true,
	})
	if err != nil {
		return nil, fmt.Errorf("%w\n(if %s holds a cluster made on other ports or of another size, remove it)", err, dir)
	}
	return c, nil
}
