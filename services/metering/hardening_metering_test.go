package metering_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
)

// failingRegistry answers AuthenticateKey as a registry whose Redis is
// down used to: INTERNAL, naming the key hash and the Redis address.
type failingRegistry struct {
	registryv1connect.UnimplementedRegistryServiceHandler
	redisAddr string
}

func (r *failingRegistry) AuthenticateKey(_ context.Context, req *connect.Request[registryv1.AuthenticateKeyRequest]) (*connect.Response[registryv1.AuthenticateKeyResponse], error) {
	return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("read herald:{registry}:keys %s: dial tcp %s: connect: connection refused", req.Msg.GetKeyHash(), r.redisAddr))
}

// With Redis down (and a registry that cannot check keys), GetUsage answers
// UNAVAILABLE with a generic message: neither the Redis address, nor a
// herald: key, nor the caller's key hash.
func TestRedisDownAnswersUnavailableWithoutInternals(t *testing.T) {
	rs := testutil.Redis(t)
	mux := http.NewServeMux()
	mux.Handle(registryv1connect.NewRegistryServiceHandler(&failingRegistry{redisAddr: rs.Addr()}))
	reg := httptest.NewUnstartedServer(mux)
	reg.Config.Protocols = new(http.Protocols)
	reg.Config.Protocols.SetHTTP1(true)
	reg.Config.Protocols.SetUnencryptedHTTP2(true)
	reg.Start()
	t.Cleanup(reg.Close)
	e := &env{redisURL: rs.URL(), registryAddr: reg.Listener.Addr().String(), rdb: testutil.RedisClient(t, rs)}
	r := e.start(t)
	if err := rs.Stop(); err != nil {
		t.Fatal(err)
	}
	hash := auth.HashSecret(keyA)
	bad := []string{rs.Addr(), "herald:", hash, "dial tcp", "connection refused"}
	for _, key := range []string{adminKey, keyA} {
		client := meteringv1connect.NewMeteringServiceClient(rpc.HTTPClient(), r.base, rpc.ClientOptions(key)...)
		_, err := client.GetUsage(context.Background(), connect.NewRequest(&meteringv1.GetUsageRequest{}))
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("GetUsage with key %q: %v, want UNAVAILABLE", key, err)
		}
		for _, b := range bad {
			if err != nil && strings.Contains(err.Error(), b) {
				t.Errorf("GetUsage with key %q: %q names %q", key, err.Error(), b)
			}
		}
		req, _ := http.NewRequest("GET", r.base+"/v1/usage", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("GET /v1/usage with key %q: %d %s, want 503", key, res.StatusCode, body)
		}
		for _, b := range bad {
			if strings.Contains(string(body), b) {
				t.Errorf("GET /v1/usage with key %q: %s names %q", key, body, b)
			}
		}
	}
}
