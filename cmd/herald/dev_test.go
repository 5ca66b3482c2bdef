package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/spf13/cobra"
)

// devRun is one `herald dev` running in this process.
type devRun struct {
	out                  *syncBuffer
	router, edge, admin  string
	stop                 func() error
	published, delivered []string
}

var (
	bannerRouter = regexp.MustCompile(`(?m)^  router\s+(http://\S+)`)
	bannerEdge   = regexp.MustCompile(`(?m)^  edge\s+(http://\S+)`)
	bannerAdmin  = regexp.MustCompile(`admin key: (\S+)`)
)

// startDev runs `herald dev args...` until its banner is printed.
func startDev(t *testing.T, args ...string) *devRun {
	t.Helper()
	d := &devRun{out: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
		root.AddCommand(devCommand())
		root.SetOut(d.out)
		root.SetErr(d.out)
		root.SetArgs(append([]string{"dev"}, args...))
		done <- root.ExecuteContext(ctx)
	}()
	stopped := false
	var err error
	d.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				err = fmt.Errorf("dev did not stop within 60s")
			}
		}
		return err
	}
	t.Cleanup(func() { _ = d.stop() })
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(d.out.String(), "Herald is running") {
		select {
		case err := <-done:
			t.Fatalf("dev ended before its banner: %v\n%s", err, d.out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no banner after 90s:\n%s", d.out)
		}
	}
	s := d.out.String()
	d.router, d.edge, d.admin = bannerRouter.FindStringSubmatch(s)[1], bannerEdge.FindStringSubmatch(s)[1], bannerAdmin.FindStringSubmatch(s)[1]
	return d
}

// publish publishes one billing.invoice.paid event and returns its cursor.
func (d *devRun) publish(t *testing.T, id string) string {
	t.Helper()
	c := routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), d.router, rpc.ClientOptions(d.admin)...)
	res, err := c.Publish(context.Background(), connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{{
		Id: id, Source: "//dev-test", SpecVersion: "1.0", Type: "billing.invoice.paid",
		Data: &eventv1.CloudEvent_TextData{TextData: `{"invoice_id":"` + id + `","amount":100,"currency":"EUR"}`},
	}}}))
	if err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
	if r := res.Msg.GetResults()[0]; r.GetError() != nil || r.GetDuplicate() {
		t.Fatalf("publish %s: %v duplicate=%v", id, r.GetError(), r.GetDuplicate())
	}
	return res.Msg.GetResults()[0].GetCursor()
}

// poll reads billing.invoice.paid from the start of the log through the
// edge, and returns the events' ids.
func (d *devRun) poll(t *testing.T) []string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, d.edge+"/v1/poll?types=billing.invoice.paid&cursor=0", nil)
	req.Header.Set("Authorization", "Bearer "+d.admin)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var answer struct {
		Events []struct {
			Event struct {
				ID string `json:"id"`
			} `json:"event"`
		} `json:"events"`
	}
	if err := json.NewDecoder(res.Body).Decode(&answer); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("poll: %s %v", res.Status, err)
	}
	var ids []string
	for _, e := range answer.Events {
		ids = append(ids, e.Event.ID)
	}
	return ids
}

// freePortRun returns a port p with p..p+n-1 free on 127.0.0.1, and their
// cluster bus ports (port+10000).
func freePortRun(t *testing.T, n int) int {
	t.Helper()
	for range 100 {
		_, ps, _ := net.SplitHostPort(testutil.FreeAddr(t))
		p, _ := strconv.Atoi(ps)
		if p+n > 65535 {
			continue
		}
		free := true
		for i := range n {
			for _, q := range []int{p + i, p + i + 10000} { // and its cluster bus port
				ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(q)))
				if err != nil {
					free = false
					break
				}
				ln.Close()
			}
			if !free {
				break
			}
		}
		if free {
			return p
		}
	}
	t.Fatalf("no %d free ports in a row", n)
	return 0
}

// `herald dev --cluster` starts a Redis Cluster of three masters and three
// replicas under ./var/cluster, runs the mesh on it (an event published
// through the router is read back through the edge), and a restart reuses
// the same cluster, with the event still in its log.
func TestDevCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster and the whole mesh")
	}
	for _, v := range []string{"HERALD_EDGE_ADDR", "HERALD_ROUTER_ADDR", "HERALD_REGISTRY_ADDR", "HERALD_METERING_ADDR"} {
		t.Setenv(v, "127.0.0.1:0")
	}
	for _, v := range []string{"HERALD_REDIS_URL", "HERALD_ADMIN_KEY", "HERALD_SECRET_KEY"} {
		t.Setenv(v, "")
	}
	dir := t.TempDir()
	port := freePortRun(t, 7) // dev's usual port, then the cluster's six
	args := []string{"--cluster", "--var", dir, "--redis-port", strconv.Itoa(port)}

	first := startDev(t, args...)
	s := first.out.String()
	wantNodes := []string{}
	for i := range 6 {
		wantNodes = append(wantNodes, fmt.Sprintf("127.0.0.1:%d", port+1+i))
	}
	for _, want := range []string{
		"Redis Cluster of 6 nodes, created; data in " + dir + "/cluster/node-N (AOF, appendfsync always)",
		"node-0 " + wantNodes[0] + "  master, slots 0-5460",
		"node-2 " + wantNodes[2] + "  master, slots 10923-16383",
		"  node-3 " + wantNodes[3] + "  replica of 127.0.0.1:",
		"HERALD_REDIS_URL=redis+cluster://" + strings.Join(wantNodes, ","),
	} {
		if !strings.Contains(s, want) {
			t.Errorf("dev's output lacks %q:\n%s", want, s)
		}
	}
	first.publish(t, "inv-1")
	testutil.Eventually(t, 20*time.Second, func() bool { return fmt.Sprint(first.poll(t)) == "[inv-1]" }, "the event read back through the edge")
	if err := first.stop(); err != nil {
		t.Fatalf("dev: %v\n%s", err, first.out)
	}
	if !strings.Contains(first.out.String(), "herald: stopped") {
		t.Errorf("no clean stop:\n%s", first.out)
	}

	second := startDev(t, args...)
	if s := second.out.String(); !strings.Contains(s, "Redis Cluster of 6 nodes, reused") {
		t.Errorf("the restart did not reuse the cluster:\n%s", s)
	}
	if second.admin != first.admin {
		t.Errorf("admin key changed across the restart")
	}
	second.publish(t, "inv-2")
	testutil.Eventually(t, 20*time.Second, func() bool { return fmt.Sprint(second.poll(t)) == "[inv-1 inv-2]" }, "both events, the first from before the restart")
	if err := second.stop(); err != nil {
		t.Fatalf("dev: %v\n%s", err, second.out)
	}
}
