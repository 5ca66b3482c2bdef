package edge_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
)

// vmRSS reads a process's resident set in KiB.
func vmRSS(b *testing.B, pid int) float64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib float64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kib)
			return kib
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkIdleSSEConnectionRSS opens HERALD_BENCH_SSE_CONNS (default
// 2000) idle SSE streams (HTTP/1.1, one connection each) to an edge running
// as its own process and reports the growth of its resident set per
// stream. b.N is not used: the figure is per connection, not per op.
//
//	go test -run '^$' -bench IdleSSEConnectionRSS -benchtime 1x ./services/edge
func BenchmarkIdleSSEConnectionRSS(b *testing.B) {
	conns := 2000
	if v := os.Getenv("HERALD_BENCH_SSE_CONNS"); v != "" {
		fmt.Sscan(v, &conns)
	}
	srv := testutil.Redis(b)
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey}
	reg, err := registry.New(registry.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	raddr := testutil.Serve(b, reg)
	regClient := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(raddr), rpc.ClientOptions(adminKey)...)
	var key string
	testutil.Eventually(b, 20*time.Second, func() bool {
		if _, err := regClient.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{
			EventType: &registryv1.EventType{Name: "shop.order.created", Schema: `{"type":"object"}`},
		})); err != nil {
			return false
		}
		res, err := regClient.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
			Name: "idle", Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "shop.*"}},
		}}))
		if err == nil {
			key = res.Msg.GetKey().GetSecret()
		}
		return err == nil
	}, "the registry accepts a type and an application")

	addr := testutil.FreeAddr(b)
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), edgeProcessEnv+"=20000",
		"HERALD_REDIS_URL="+srv.URL(), "HERALD_ADMIN_KEY="+adminKey,
		"HERALD_REGISTRY_ADDR="+raddr, "HERALD_EDGE_ADDR="+addr, "HERALD_EDGE_MAX_STREAMS=19900", "GODEBUG="+os.Getenv("HERALD_BENCH_EDGE_GODEBUG"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if b.Failed() {
			b.Log(out.String())
		}
	}()
	testutil.Eventually(b, 20*time.Second, func() bool {
		res, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	}, "the edge is ready")

	open := func(n int) []net.Conn {
		var cs []net.Conn
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.WriteString(c, "GET /v1/stream?types=shop.* HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+key+"\r\n\r\n"); err != nil {
				b.Fatal(err)
			}
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					b.Fatalf("stream: %v", err)
				}
				if strings.Contains(line, ": connected") {
					break
				}
			}
			cs = append(cs, c)
		}
		return cs
	}
	// Warm up: the first streams grow pools and caches once.
	for _, c := range open(200) {
		c.Close()
	}
	time.Sleep(time.Second)
	settle := func() float64 {
		time.Sleep(3 * time.Second) // a GC cycle or two
		return vmRSS(b, cmd.Process.Pid)
	}
	gomem := func() map[string]float64 {
		res, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			b.Fatal(err)
		}
		defer res.Body.Close()
		m := map[string]float64{}
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			for _, name := range []string{"go_goroutines", "go_memstats_stack_inuse_bytes", "go_memstats_heap_inuse_bytes", "go_memstats_heap_alloc_bytes", "go_memstats_sys_bytes"} {
				if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
					var f float64
					fmt.Sscan(v, &f)
					m[name] = f
				}
			}
		}
		return m
	}
	before := settle()
	m0 := gomem()
	cs := open(conns)
	after := settle()
	m1 := gomem()
	for k, v := range m1 {
		b.Logf("%s: %.0f per stream", k, (v-m0[k])/float64(conns))
	}
	for _, c := range cs {
		c.Close()
	}
	perConn := (after - before) / float64(conns)
	b.ReportMetric(perConn, "KiB/conn")
	b.Logf("edge RSS %.0f KiB before, %.0f KiB with %d idle SSE streams: %.1f KiB each", before, after, conns, perConn)
}
