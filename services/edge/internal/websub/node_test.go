package websub_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/websub"
)

// nodeEvent is one line of tests/websub/subscriber.mjs.
type nodeEvent struct {
	Port        int    `json:"port"`
	Event       string `json:"event"`
	Path        string `json:"path"`
	Status      int    `json:"status"`
	Body        string `json:"body"`
	Mode        string `json:"mode"`
	Topic       string `json:"topic"`
	Lease       int    `json:"lease"`
	OK          bool   `json:"ok"`
	Why         string `json:"why"`
	ID          string `json:"id"`
	Signature   bool   `json:"signature"`
	Links       bool   `json:"links"`
	ContentType string `json:"contentType"`
	Message     string `json:"message"`
	Hub         string `json:"hub"`
	Self        string `json:"self"`
}

// nodeSubscriber runs subscriber.mjs and collects what it prints.
type nodeSubscriber struct {
	mu     sync.Mutex
	events []nodeEvent
	stderr bytes.Buffer
}

func (n *nodeSubscriber) all() []nodeEvent {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.events)
}

func (n *nodeSubscriber) find(t *testing.T, what string, match func(nodeEvent) bool) nodeEvent {
	t.Helper()
	var found nodeEvent
	testutil.Eventually(t, wait, func() bool {
		for _, ev := range n.all() {
			if ev.Event == "error" {
				n.mu.Lock()
				defer n.mu.Unlock()
				t.Fatalf("subscriber.mjs: %s\n%s", ev.Message, n.stderr.String())
			}
			if match(ev) {
				found = ev
				return true
			}
		}
		return false
	}, what)
	return found
}

// subscriberDir is tests/websub with its dependencies installed (npm ci,
// as `make test-node` does, when they are missing).
func subscriberDir(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		candidate := filepath.Join(dir, "tests", "websub")
		if _, err := os.Stat(filepath.Join(candidate, "subscriber.mjs")); err == nil {
			dir = candidate
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("tests/websub/subscriber.mjs not found above the working directory")
		}
		dir = parent
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "http-link-header", "package.json")); err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", dir, err, out)
		}
	}
	return dir
}

// A Node subscriber discovers the hub from the topic's Link headers,
// subscribes two callbacks with a secret, answers both verifications, and
// checks X-Hub-Signature on every delivery with its own HMAC; once the
// short lease has run out, events reach only the other callback.
func TestNodeSubscriber(t *testing.T) {
	e := start(t)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found on PATH (install Node.js >= 18; `make test-node` needs it too): %v", err)
	}
	dir := subscriberDir(t)
	const secret = "the subscriber's own secret"
	cmd := exec.Command(node, "subscriber.mjs", "--watch-stdin")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HERALD_URL="+e.base, "HERALD_KEY="+e.key, "TOPIC_TYPE="+paid,
		"WEBSUB_SECRET="+secret, "SHORT_LEASE=5")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n := &nodeSubscriber{}
	cmd.Stderr = &lockedWriter{mu: &n.mu, w: &n.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev nodeEvent
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				n.mu.Lock()
				n.events = append(n.events, ev)
				n.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { <-read; _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})

	port := n.find(t, "the subscriber never listened", func(ev nodeEvent) bool { return ev.Port != 0 }).Port
	d := n.find(t, "the subscriber never discovered the hub", func(ev nodeEvent) bool { return ev.Event == "discovered" })
	if d.Hub != e.common.PublicURL+websub.Path || d.Self != e.topicURL(paid) {
		t.Fatalf("discovered hub %q, self %q", d.Hub, d.Self)
	}
	ids := map[string]string{}
	for path, lease := range map[string]int{"/short": 5, "/long": 3600} {
		r := n.find(t, "no answer to the subscription of "+path, func(ev nodeEvent) bool { return ev.Event == "requested" && ev.Path == path })
		if r.Status != 202 {
			t.Fatalf("subscription of %s: %d %s", path, r.Status, r.Body)
		}
		v := n.find(t, path+" was never verified", func(ev nodeEvent) bool { return ev.Event == "verified" && ev.Path == path })
		if !v.OK || v.Mode != "subscribe" || v.Lease != lease {
			t.Fatalf("verification of %s: %+v", path, v)
		}
		ids[path] = websub.SubscriptionID(e.app.GetId(), paid, fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		testutil.Eventually(t, wait, func() bool { return e.live(ids[path]) }, path+" was never stored")
	}

	delivered := func(path, id string) nodeEvent {
		return n.find(t, id+" never reached "+path, func(ev nodeEvent) bool { return ev.Event == "delivery" && ev.Path == path && ev.ID == id })
	}
	e.publish(paid, "node-1")
	for _, path := range []string{"/short", "/long"} {
		ev := delivered(path, "node-1")
		if !ev.Signature || !ev.Links || !strings.HasPrefix(ev.ContentType, "application/cloudevents+json") {
			t.Fatalf("delivery to %s: %+v", path, ev)
		}
	}

	testutil.Eventually(t, wait, func() bool { return !e.live(ids["/short"]) }, "the short lease never ran out")
	e.publish(paid, "node-2")
	if ev := delivered("/long", "node-2"); !ev.Signature || !ev.Links {
		t.Fatalf("delivery to /long: %+v", ev)
	}
	for _, ev := range n.all() {
		if ev.Event == "delivery" && ev.Path == "/short" && ev.ID == "node-2" {
			t.Fatal("delivered to /short after its lease ran out")
		}
		if ev.Event == "delivery" && !ev.Signature {
			t.Fatalf("a delivery did not verify: %+v", ev)
		}
	}
}

// lockedWriter writes under the subscriber's lock (the exec package writes
// stderr while the test reads it).
type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
