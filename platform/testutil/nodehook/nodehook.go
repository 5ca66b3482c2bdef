// Package nodehook runs tests/webhooks/receiver.mjs, a webhook receiver that
// checks every request with the official Standard Webhooks library for
// JavaScript (npm standardwebhooks, pinned in tests/webhooks/package-lock.json),
// so that Go tests see Herald's signatures verified by a partner's stack
// over a real socket.
//
// `make test-node` installs the library; when tests/webhooks/node_modules is
// missing, the first Start runs `npm ci` there itself (once per test binary,
// under a file lock shared with the other test binaries). Node.js (>= 18)
// must be on PATH: without it the test fails, it is not skipped.
package nodehook

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// startTimeout bounds how long Start waits for the receiver's port line
// (Node's start, the module load); npmTimeout bounds the install.
const (
	startTimeout = 30 * time.Second
	npmTimeout   = 5 * time.Minute
)

// A Receiver is a running receiver.mjs. It answers 204 to a POST that one
// of its secrets verifies, 400 with the library's message otherwise, and
// records every POST (see Results).
type Receiver struct {
	url    string
	client *http.Client // its own, so no idle connection outlives the test (goleak)
}

// A Result is the receiver's record of one POST.
type Result struct {
	// ID and Timestamp are the webhook-id and webhook-timestamp headers as
	// received ("" when absent).
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	// Valid reports whether the library verified the request with one of
	// the receiver's secrets; Secret is that secret's index in the order
	// given to Start, -1 when none verified.
	Valid  bool `json:"valid"`
	Secret int  `json:"secret"`
	// Error is the library's message when no secret verified ("No matching
	// signature found", "Message timestamp too old", ...), the distinct
	// messages of several secrets joined by "; ".
	Error string `json:"error"`
	// Path is the request's path, Body its body read as UTF-8.
	Path string `json:"path"`
	Body string `json:"body"`
}

// Start runs a receiver that verifies with secrets (whsec_ secrets; the
// library knows only v1 signatures, so whsk_/whpk_ keys do not belong here)
// and stops it when the test ends. It fails the test when Node.js or the
// library cannot be found or installed, or when the receiver does not start.
func Start(t testing.TB, secrets ...string) *Receiver {
	t.Helper()
	if len(secrets) == 0 {
		t.Fatal("nodehook.Start: give at least one whsec_ secret")
	}
	script := receiverScript(t)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("nodehook: node not found on PATH (install Node.js >= 18; `make test-node` needs it too): %v", err)
	}
	cmd := exec.Command(node, script, "--watch-stdin")
	cmd.Dir = filepath.Dir(script)
	// The secrets travel in the environment, not on the command line.
	cmd.Env = append(os.Environ(), "WEBHOOK_SECRETS="+strings.Join(secrets, " "))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("nodehook: start %s: %v", script, err)
	}

	// The first line is {"port":N}; the rest of stdout is drained so the
	// receiver never blocks on a full pipe.
	first := make(chan string, 1)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		br := bufio.NewReader(stdout)
		line, _ := br.ReadString('\n')
		first <- line
		_, _ = io.Copy(io.Discard, br)
	}()
	stop := func() {
		_ = stdin.Close() // --watch-stdin: the receiver exits by itself
		_ = cmd.Process.Kill()
		<-drained
		_ = cmd.Wait()
	}

	var line string
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case line = <-first:
	case <-timer.C:
		stop()
		t.Fatalf("nodehook: receiver.mjs printed no port in %v; stderr:\n%s", startTimeout, stderr)
	}
	var hello struct {
		Port int `json:"port"`
	}
	if err := json.Unmarshal([]byte(line), &hello); err != nil || hello.Port == 0 {
		stop()
		t.Fatalf("nodehook: receiver.mjs did not start (first line %q); stderr:\n%s", strings.TrimSpace(line), stderr)
	}
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		stop()
	})
	return &Receiver{url: fmt.Sprintf("http://127.0.0.1:%d", hello.Port), client: &http.Client{Transport: tr}}
}

// URL returns the receiver's base URL, http://127.0.0.1:port. Any path
// under it receives webhooks.
func (r *Receiver) URL() string { return r.url }

// Results returns the records of every POST so far, in arrival order.
func (r *Receiver) Results(t testing.TB) []Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url+"/results", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("nodehook: GET /results: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("nodehook: GET /results: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("nodehook: GET /results: %s: %s", resp.Status, body)
	}
	var out []Result
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("nodehook: GET /results: %v", err)
	}
	return out
}

var (
	installOnce sync.Once
	installDir  string
	installErr  error
)

// receiverScript returns the path of receiver.mjs, its dependencies
// installed.
func receiverScript(t testing.TB) string {
	t.Helper()
	installOnce.Do(func() {
		installDir, installErr = findReceiverDir()
		if installErr != nil {
			return
		}
		installErr = ensureInstalled(installDir)
	})
	if installErr != nil {
		t.Fatal(installErr)
	}
	return filepath.Join(installDir, "receiver.mjs")
}

// installed reports whether dir's node_modules holds the library.
func installed(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "node_modules", "standardwebhooks", "package.json"))
	return err == nil
}

// ensureInstalled runs `npm ci` in dir unless the library is there. Test
// binaries of several packages may get here at once: a lock file makes one
// install while the others wait, then find it done.
func ensureInstalled(dir string) error {
	if installed(dir) {
		return nil
	}
	unlock, err := lockFile(filepath.Join(dir, "node_modules.lock"))
	if err != nil {
		return fmt.Errorf("nodehook: lock %s: %w", dir, err)
	}
	defer unlock()
	if installed(dir) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), npmTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nodehook: npm ci in %s: %v\n%s", dir, err, out)
	}
	return nil
}

// findReceiverDir walks up from the working directory (the package's
// directory under go test) to the repository's tests/webhooks.
func findReceiverDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		candidate := filepath.Join(dir, "tests", "webhooks")
		if _, err := os.Stat(filepath.Join(candidate, "receiver.mjs")); err == nil {
			return candidate, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("nodehook: tests/webhooks/receiver.mjs not found above the working directory")
		}
		dir = parent
	}
}

// syncBuffer is a bytes.Buffer that the exec package writes while Start
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
