package auth_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/auth"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Every code gets its own HTTP status, and error metadata travels as
// headers that a Connect client reads back.
func TestWriteErrorMapsEveryCode(t *testing.T) {
	codes := map[connect.Code]int{
		connect.CodeCanceled:           499,
		connect.CodeUnknown:            500,
		connect.CodeInvalidArgument:    400,
		connect.CodeDeadlineExceeded:   504,
		connect.CodeNotFound:           404,
		connect.CodeAlreadyExists:      409,
		connect.CodePermissionDenied:   403,
		connect.CodeResourceExhausted:  429,
		connect.CodeFailedPrecondition: 400,
		connect.CodeAborted:            409,
		connect.CodeOutOfRange:         400,
		connect.CodeUnimplemented:      501,
		connect.CodeInternal:           500,
		connect.CodeUnavailable:        503,
		connect.CodeDataLoss:           500,
		connect.CodeUnauthenticated:    401,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var code connect.Code
		if err := code.UnmarshalText([]byte(r.URL.Query().Get("code"))); err != nil {
			auth.WriteError(w, r, errors.New("redis: dial tcp 10.0.0.1:7001: secret internals"))
			return
		}
		err := connect.NewError(code, errors.New("boom"))
		err.Meta().Set("Retry-After", "7")
		auth.WriteError(w, r, err)
	}))
	defer srv.Close()
	for code, want := range codes {
		res, err := http.Get(srv.URL + "/x?code=" + code.String())
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("%v: status %d, want %d", code, res.StatusCode, want)
		}
		if res.Header.Get("Retry-After") != "7" {
			t.Errorf("%v: Retry-After %q, want the error's metadata", code, res.Header.Get("Retry-After"))
		}
		if (code == connect.CodeUnauthenticated) != (res.Header.Get("WWW-Authenticate") != "") {
			t.Errorf("%v: WWW-Authenticate %q", code, res.Header.Get("WWW-Authenticate"))
		}
	}
	// A Connect client, and a gRPC one, read code and metadata back.
	for name, opts := range map[string][]connect.ClientOption{"connect": nil, "grpc-web": {connect.WithGRPCWeb()}} {
		client := connect.NewClient[emptypb.Empty, emptypb.Empty](srv.Client(), srv.URL+"/pkg.S/M?code=aborted", opts...)
		_, err := client.CallUnary(context.Background(), connect.NewRequest(&emptypb.Empty{}))
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeAborted || ce.Meta().Get("Retry-After") != "7" {
			t.Errorf("%s client: %v (meta %v), want aborted with Retry-After 7", name, err, ce.Meta())
		}
	}
	// An error that is not a connect error does not leak its text.
	res, err := http.Get(srv.URL + "/x?code=nonsense")
	if err != nil {
		t.Fatal(err)
	}
	var buf [512]byte
	n, _ := res.Body.Read(buf[:])
	res.Body.Close()
	if res.StatusCode != 500 || strings.Contains(string(buf[:n]), "10.0.0.1") {
		t.Errorf("plain error: %d %s", res.StatusCode, buf[:n])
	}
}

// A flood of random keys from one address costs at most a burst of
// resolver calls, then answers 429 with Retry-After without resolving;
// a good key from another address keeps working from the cache.
func TestRandomKeyFloodIsLimitedPerAddress(t *testing.T) {
	const good = "hk_good-key-for-the-test"
	var mu sync.Mutex
	calls := map[string]int{}
	a, err := auth.New(auth.Options{
		AdminKey: "test-admin-key-0123456789", CacheTTL: time.Minute, FailedPerSecond: 0.01, FailedBurst: 10,
		Resolver: auth.ResolverFunc(func(_ context.Context, h string) (auth.Principal, error) {
			mu.Lock()
			defer mu.Unlock()
			calls[h]++
			if h == auth.HashSecret(good) {
				return auth.Principal{ApplicationID: "app_good"}, nil
			}
			return auth.Principal{}, auth.ErrUnknownKey
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Middleware(false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := auth.FromContext(r.Context())
		_, _ = w.Write([]byte(p.ApplicationID))
	})))
	defer srv.Close()
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	get := func(c *http.Client, key string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	goodClient, attacker := from("127.0.0.2"), from("127.0.0.1")
	if res := get(goodClient, good); res.StatusCode != 200 {
		t.Fatalf("good key: %d", res.StatusCode)
	}
	var last *http.Response
	for range 300 {
		last = get(attacker, auth.NewSecret())
	}
	mu.Lock()
	resolved := len(calls) - 1
	mu.Unlock()
	if resolved > 10 {
		t.Errorf("300 random keys from one address cost %d resolver calls, want at most the burst of 10", resolved)
	}
	if last.StatusCode != http.StatusTooManyRequests || last.Header.Get("Retry-After") == "" {
		t.Errorf("past the limit: %d Retry-After %q, want 429 with Retry-After", last.StatusCode, last.Header.Get("Retry-After"))
	}
	for range 5 {
		if res := get(goodClient, good); res.StatusCode != 200 {
			t.Fatalf("good key from another address after the flood: %d", res.StatusCode)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if n := calls[auth.HashSecret(good)]; n != 1 {
		t.Errorf("the good key was resolved %d times, want once (cached, not evicted by the flood)", n)
	}
}
