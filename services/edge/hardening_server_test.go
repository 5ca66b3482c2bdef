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
	"os/signal"
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
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/registry"
	"golang.org/x/sys/unix"
)

// edgeProcessEnv, set to an open-file limit, makes this test binary an
// edge process configured from HERALD_* variables that first lowers its
// own RLIMIT_NOFILE to that limit.
const edgeProcessEnv = "HERALD_TEST_EDGE_NOFILE"

const adminKey = "test-admin-key-0123456789"

func TestMain(m *testing.M) {
	if v := os.Getenv(edgeProcessEnv); v != "" {
		os.Exit(edgeProcess(v))
	}
	os.Exit(m.Run())
}

func edgeProcess(nofile string) int {
	var n uint64
	if _, err := fmt.Sscan(nofile, &n); err != nil {
		fmt.Fprintln(os.Stderr, "edge:", err)
		return 2
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: n}); err != nil {
		fmt.Fprintln(os.Stderr, "edge: setrlimit:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := edge.ConfigFromEnv()
	var svc *edge.Service
	if err == nil {
		svc, err = edge.New(cfg)
	}
	if err == nil {
		err = svc.Run(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "edge:", err)
		return 1
	}
	return 0
}

// rawConn is one client connection, read by hand.
type rawConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{c: c, br: bufio.NewReader(c)}
}

// request sends a GET and reads the status line and headers (hang
// detection: 10s). It returns the status code and headers, or 0.
func (r *rawConn) request(path, key string) (int, http.Header) {
	req := "GET " + path + " HTTP/1.1\r\nHost: x\r\n"
	if key != "" {
		req += "Authorization: Bearer " + key + "\r\n"
	}
	_ = r.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(r.c, req+"\r\n"); err != nil {
		return 0, nil
	}
	res, err := http.ReadResponse(r.br, nil)
	if err != nil {
		return 0, nil
	}
	if res.ContentLength >= 0 {
		_, _ = io.Copy(io.Discard, res.Body)
	}
	return res.StatusCode, res.Header
}

// closedByServer reports whether the server has closed the connection
// (read returns EOF or a reset) rather than keeping it open.
func (r *rawConn) closedByServer() bool {
	_ = r.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err := r.br.ReadByte()
	ne, ok := err.(net.Error)
	return err != nil && !(ok && ne.Timeout())
}

// The edge, with its open-file limit lowered to 300, takes more streams and
// idle keep-alive connections than that: it closes idle connections first,
// refuses streams past its ceiling with 503 and Retry-After, answers
// /healthz and /readyz throughout, and never meets the limit in accept.
func TestEdgeConnectionCeilingBelowFileLimit(t *testing.T) {
	srv := testutil.Redis(t)
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey}
	reg, err := registry.New(registry.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	raddr := testutil.Serve(t, reg)
	regClient := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(raddr), rpc.ClientOptions(adminKey)...)
	testutil.Eventually(t, 20*time.Second, func() bool {
		_, err := regClient.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{
			EventType: &registryv1.EventType{Name: "shop.order.created", Schema: `{"type":"object"}`},
		}))
		return err == nil
	}, "registry accepts an event type")

	addr := testutil.FreeAddr(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), edgeProcessEnv+"=300",
		"HERALD_REDIS_URL="+srv.URL(), "HERALD_ADMIN_KEY="+adminKey,
		"HERALD_REGISTRY_ADDR="+raddr, "HERALD_EDGE_ADDR="+addr)
	var out bytes.Buffer // read only once the process has ended
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	log := func() string {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		return out.String()
	}
	defer func() {
		if l := log(); t.Failed() {
			lines := strings.Split(strings.TrimSpace(l), "\n")
			t.Logf("edge log (last lines):\n%s", strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
	}()
	health := func(when string) {
		t.Helper()
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, _ := dial(t, addr).request(path, ""); code != 200 {
				t.Fatalf("%s: %s answered %d, want 200", when, path, code)
			}
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		res, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	}, "the edge is ready")

	// 100 idle keep-alive connections.
	var idle []*rawConn
	for range 100 {
		c := dial(t, addr)
		if code, _ := c.request("/healthz", ""); code != 200 {
			t.Fatalf("keep-alive /healthz: %d", code)
		}
		idle = append(idle, c)
	}
	health("with 100 idle connections")

	// Streams until one is refused; more than the file limit would allow.
	streams, refused := 0, 0
	for i := range 320 {
		code, hdr := dial(t, addr).request("/v1/stream?types=shop.*", adminKey)
		switch code {
		case 200:
			if refused > 0 {
				t.Fatalf("stream %d accepted after one was refused", i)
			}
			streams++
		case 503:
			if refused == 0 {
				open := 0
				for _, c := range idle {
					if !c.closedByServer() {
						open++
					}
				}
				if open > 0 {
					t.Fatalf("a stream was refused while %d idle keep-alive connections were still open; idle ones go first", open)
				}
				if hdr.Get("Retry-After") == "" {
					t.Fatalf("503 without Retry-After: %v", hdr)
				}
				health(fmt.Sprintf("at the ceiling (%d streams)", streams))
			}
			refused++
		default:
			t.Fatalf("stream %d (with %d open): status %d, want 200 or 503", i, streams, code)
		}
		if i%50 == 0 {
			health(fmt.Sprintf("with %d streams", streams))
		}
	}
	if refused == 0 {
		t.Fatalf("320 streams and 100 idle connections under a 300-file limit were all accepted")
	}
	if streams < 100 {
		t.Fatalf("only %d streams before the ceiling; the idle connections should have made room", streams)
	}
	health("after the refusals")
	if l := log(); strings.Contains(l, "too many open files") {
		t.Fatalf("the edge met its file limit: %s", l[strings.Index(l, "too many open files")-200:][:300])
	}
	t.Logf("%d streams accepted, %d refused", streams, refused)
}
