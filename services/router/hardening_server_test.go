package router_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/services/router"
)

// slowPost opens a raw TCP connection and sends the headers of a POST with
// a 100000-byte body, then one body byte per second until the connection
// ends or the test gives up (hang detection, not a timing assertion). It
// returns the status line read (empty if none) and whether the server
// closed the connection within giveUp.
func slowPost(t *testing.T, addr, path, key string, giveUp time.Duration) (status string, closed bool) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hdr := "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/proto\r\nContent-Length: 100000\r\n"
	if key != "" {
		hdr += "Authorization: Bearer " + key + "\r\n"
	}
	if _, err := io.WriteString(c, hdr+"\r\n"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if _, err := c.Write([]byte{0}); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(giveUp))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", isClosed(err)
	}
	_, err = io.Copy(io.Discard, br)
	return strings.TrimSpace(line), err == nil || isClosed(err)
}

func isClosed(err error) bool {
	ne, ok := err.(net.Error)
	return err == io.EOF || !(ok && ne.Timeout())
}

// An unauthenticated POST is answered 401 from its headers, without the
// server waiting for (or draining) a body that arrives one byte a second,
// on the router and the registry alike.
func TestUnauthenticatedSlowBodyIsRefusedBeforeTheBody(t *testing.T) {
	e := newEnv(t)
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	for name, target := range map[string]string{
		"router":   addr + " /herald.router.v1.RouterService/Publish",
		"registry": e.common.RegistryAddr + " /herald.registry.v1.RegistryService/CreateApplication",
	} {
		t.Run(name, func(t *testing.T) {
			a, path, _ := strings.Cut(target, " ")
			status, closed := slowPost(t, a, path, "", 8*time.Second)
			if !strings.Contains(status, " 401 ") || !closed {
				t.Fatalf("unauthenticated slow body: status %q, closed %v; want 401 and the connection closed at once", status, closed)
			}
			status, closed = slowPost(t, a, path, "hk_not-a-key", 8*time.Second)
			if !strings.Contains(status, " 401 ") || !closed {
				t.Fatalf("bad key, slow body: status %q, closed %v; want 401 and the connection closed", status, closed)
			}
		})
	}

	// A gRPC client whose request body never completes still sees
	// UNAUTHENTICATED, in gRPC's own terms.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodPost, rpc.BaseURL(addr)+"/herald.router.v1.RouterService/Publish", pr)
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	res, err := rpc.HTTPClient().Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("gRPC request with an open body: %v (no answer before the body)", err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if got := res.Trailer.Get("Grpc-Status") + res.Header.Get("Grpc-Status"); got != "16" {
		t.Fatalf("gRPC status %q, want 16 (UNAUTHENTICATED)", got)
	}
}

// An authenticated request whose body crawls is cut at the body deadline.
func TestAuthenticatedSlowBodyIsCutAtTheDeadline(t *testing.T) {
	e := newEnv(t)
	cfg := router.Config{MaxBatch: 100}
	e.common.BodyReadTimeout = time.Second
	addr, _ := e.startRouterWith(t, cfg)
	_, closed := slowPost(t, addr, "/herald.router.v1.RouterService/Publish", adminKey, 15*time.Second)
	if !closed {
		t.Fatal("an authenticated body sent one byte a second was still being read after 15s; want it cut at the 1s body deadline")
	}
}

// Server streams outlive the body deadline, over HTTP/2 (gRPC) and over
// HTTP/1.1 (Connect), where a deadline left on the connection would cut
// the response.
func TestStreamsOutliveTheBodyDeadline(t *testing.T) {
	e := newEnv(t)
	e.common.BodyReadTimeout = time.Second
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "pub")
	consumerID, consumerKey := e.consumerApp(t, "consumer", "shop.*")
	addr, _ := e.startRouterWith(t, router.Config{MaxBatch: 100})
	h1 := routerv1connect.NewRouterServiceClient(http.DefaultClient, rpc.BaseURL(addr), connect.WithInterceptors(auth.ClientInterceptor(consumerKey)))
	clients := map[string]routerv1connect.RouterServiceClient{"grpc-h2c": routerClient(addr, consumerKey), "connect-http1": h1}
	consumers := map[string]*consumer{}
	for name, client := range clients {
		sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{"shop.*"}, Delivery: policy(30*time.Second, 5)})
		consumers[name] = subscribeTo(t, client, &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 10})
	}
	time.Sleep(3 * time.Second) // past the 1s body deadline: the point of the test
	pub := routerClient(addr, pubKey)
	for i := range 2 {
		mustPublish(t, pub, event(orderCreated, fmt.Sprintf("late-%d", i), order(fmt.Sprintf("o-%d", i), 5)))
		time.Sleep(1500 * time.Millisecond)
	}
	for name, c := range consumers {
		if got := ids(c.take(2)); len(got) != 2 {
			t.Fatalf("%s: got %v", name, got)
		}
	}
}
