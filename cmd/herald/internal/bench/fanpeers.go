package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// The peers run in memory, as their own processes, with the settings of
// their documentation for this use: no history, no persistence, logging at
// error level. Each is published to over its own HTTP API, one event per
// request (neither has a batch publish that keeps order across calls in
// flight), and streamed from over its SSE transport.

// peer is a server process the benchmark compares Herald with.
type peer struct {
	name, ver, desc string
	proc            *child
	addr            string
	streamURL       string
	pubURL          string
	pubHeader       http.Header
	pubBody         func(data []byte) (string, []byte) // content type, body
	client          *http.Client
}

func (p *peer) stream(int) (string, map[string]string) { return p.streamURL, nil }
func (p *peer) maxBatch() int                          { return 1 }
func (p *peer) pids(int) []int                         { return []int{p.proc.pid()} }
func (p *peer) addEdge(context.Context, int) error {
	return fmt.Errorf("%s: one server only", p.name)
}
func (p *peer) version() string { return p.ver }
func (p *peer) path() string    { return p.desc }
func (p *peer) close()          { p.proc.stop(10 * time.Second) }

func (p *peer) publish(ctx context.Context, data [][]byte) error {
	for _, d := range data {
		ct, body := p.pubBody(d)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.pubURL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		for k, v := range p.pubHeader {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", ct)
		res, err := p.client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("%s publish: %d %s", p.name, res.StatusCode, bytes.TrimSpace(b))
		}
		if bytes.Contains(b, []byte(`"error"`)) {
			return fmt.Errorf("%s publish: %s", p.name, bytes.TrimSpace(b))
		}
	}
	return nil
}

func peerClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
}

// hs256 signs claims with an HMAC secret.
func hs256(secret string, claims map[string]any) (string, error) {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte(secret)}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	return jwt.Signed(s).Claims(claims).Serialize()
}

// peerVersion runs `bin version`.
func peerVersion(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "(version unknown)"
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// startPeer starts a peer's process (its output in dir/<name>.log) and
// waits until it listens on addr.
func startPeer(ctx context.Context, name, bin string, args, env []string, dir, addr string) (*child, error) {
	proc, err := startChild(name, bin, args, env, filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	if err := waitListening(ctx, proc, addr); err != nil {
		proc.stop(5 * time.Second)
		return nil, err
	}
	return proc, nil
}

// waitListening waits until addr accepts TCP connections.
func waitListening(ctx context.Context, c *child, addr string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if c.exited() {
			return fmt.Errorf("%s exited: %v\n%s", c.name, c.err, c.logTail())
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after 60s:\n%s", c.name, addr, c.logTail())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// startCentrifugo runs Centrifugo with the memory engine: clients on its
// uni-directional SSE transport, subscribed to one channel by their
// connection token's channels claim; events published over its HTTP API.
func startCentrifugo(ctx context.Context, dir, bin string, progress func(string, ...any)) (fanTarget, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(addr)
	secret, apiKey := randomToken()+randomToken(), randomToken()
	conf := fmt.Sprintf(`{
  "log": {"level": "error"},
  "http_server": {"address": %q, "port": %s},
  "engine": {"type": "memory"},
  "client": {"token": {"hmac_secret_key": %q}, "allowed_origins": ["*"]},
  "http_api": {"key": %q},
  "uni_sse": {"enabled": true},
  "usage_stats": {"disabled": true}
}`, host, port, secret, apiKey)
	confPath := filepath.Join(dir, "centrifugo.json")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	tok, err := hs256(secret, map[string]any{"sub": "bench", "channels": []string{"bench"}})
	if err != nil {
		return nil, err
	}
	ver := peerVersion(bin)
	progress("centrifugo: starting %s (%s) on %s", bin, ver, addr)
	proc, err := startPeer(ctx, "centrifugo", bin, []string{"-c", confPath}, append(os.Environ(), "HOME="+dir), dir, addr)
	if err != nil {
		return nil, err
	}
	return &peer{
		name: "centrifugo", ver: ver, proc: proc, addr: addr,
		desc:      "HTTP API publish (one per request) → memory engine → uni_sse (HTTP/1.1)",
		streamURL: "http://" + addr + "/connection/uni_sse?cf_connect=" + url.QueryEscape(`{"token":"`+tok+`"}`),
		pubURL:    "http://" + addr + "/api/publish",
		pubHeader: http.Header{"X-Api-Key": {apiKey}},
		pubBody: func(d []byte) (string, []byte) {
			return "application/json", append(append([]byte(`{"channel":"bench","data":`), d...), '}')
		},
		client: peerClient(),
	}, nil
}

// startMercure runs the Mercure hub (its Caddy build) with the local
// (in-memory) transport, anonymous subscribers, no heartbeat and no write
// timeout (which would end every stream after 10 minutes); events
// published with POST and a publisher JWT.
func startMercure(ctx context.Context, dir, bin string, progress func(string, ...any)) (fanTarget, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	secret := randomToken() + randomToken() // HS256 wants 32 bytes or more
	conf := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	log {
		level ERROR
	}
}

http://%s {
	bind %s
	mercure {
		publisher_jwt %s HS256
		anonymous
		transport local
		heartbeat 0s
		write_timeout 0s
	}
	respond "Not Found" 404
}
`, addr, host, secret)
	confPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	tok, err := hs256(secret, map[string]any{"mercure": map[string]any{"publish": []string{"*"}}})
	if err != nil {
		return nil, err
	}
	ver := peerVersion(bin)
	progress("mercure: starting %s (%s) on %s", bin, ver, addr)
	env := append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	proc, err := startPeer(ctx, "mercure", bin, []string{"run", "--config", confPath, "--adapter", "caddyfile"}, env, dir, addr)
	if err != nil {
		return nil, err
	}
	return &peer{
		name: "mercure", ver: ver, proc: proc, addr: addr,
		desc:      "POST publish (one per request) → local (in-memory) transport → SSE (HTTP/1.1)",
		streamURL: "http://" + addr + "/.well-known/mercure?topic=bench",
		pubURL:    "http://" + addr + "/.well-known/mercure",
		pubHeader: http.Header{"Authorization": {"Bearer " + tok}},
		pubBody: func(d []byte) (string, []byte) {
			return "application/x-www-form-urlencoded", []byte(url.Values{"topic": {"bench"}, "data": {string(d)}}.Encode())
		},
		client: peerClient(),
	}, nil
}
