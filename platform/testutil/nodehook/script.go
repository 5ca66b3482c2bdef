package nodehook

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A Script is a running Node script of a tests/<area> directory, read line
// by line from its standard output.
type Script struct {
	// Lines are its standard output's lines; closed when it exits.
	Lines <-chan string
	// Stderr returns what it wrote to standard error so far.
	Stderr func() string
	// Stdin is its standard input, for scripts that take commands there;
	// Run closes it when the test ends.
	Stdin io.Writer
}

var (
	areasMu sync.Mutex
	areas   = map[string]error{} // tests/<area> -> install outcome
)

// Run starts `node <script> --watch-stdin` in the repository's
// tests/<area>, with env added to the environment (secrets go there, not
// on the command line), after installing the area's package-lock.json with
// `npm ci` if node_modules/<module> is missing (once per test binary, under
// a lock shared with other test binaries). The script must exit when its
// standard input closes; Run closes it when the test ends. Node.js (>= 18)
// must be on PATH: without it the test fails, it is not skipped.
func Run(t testing.TB, area, script, module string, env ...string) *Script {
	t.Helper()
	dir, err := findArea(area, script)
	if err != nil {
		t.Fatal(err)
	}
	areasMu.Lock()
	installErr, done := areas[dir]
	if !done {
		installErr = ensureModule(dir, module)
		areas[dir] = installErr
	}
	areasMu.Unlock()
	if installErr != nil {
		t.Fatal(installErr)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("nodehook: node not found on PATH (install Node.js >= 18; `make test-node` needs it too): %v", err)
	}
	cmd := exec.Command(node, script, "--watch-stdin")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
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
	lines := make(chan string, 1024)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		exited := make(chan struct{})
		go func() {
			for range lines { // drain, so the reader never blocks
			}
			<-readDone
			_ = cmd.Wait()
			close(exited)
		}()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return &Script{Lines: lines, Stderr: stderr.String, Stdin: stdin}
}

// Install returns the directory of the repository's tests/<area> once
// its package-lock.json is installed (`npm ci` when node_modules/<module>
// is missing, once per test binary, as Run does), for tools a test runs
// itself, such as node_modules/.bin/tsc.
func Install(t testing.TB, area, module string) string {
	t.Helper()
	dir, err := findArea(area, "package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	areasMu.Lock()
	installErr, done := areas[dir]
	if !done {
		installErr = ensureModule(dir, module)
		areas[dir] = installErr
	}
	areasMu.Unlock()
	if installErr != nil {
		t.Fatal(installErr)
	}
	return dir
}

// ensureModule runs `npm ci` in dir unless node_modules/<module> is there.
func ensureModule(dir, module string) error {
	has := func() bool {
		_, err := os.Stat(filepath.Join(dir, "node_modules", module, "package.json"))
		return err == nil
	}
	if has() {
		return nil
	}
	unlock, err := lockFile(filepath.Join(dir, "node_modules.lock"))
	if err != nil {
		return fmt.Errorf("nodehook: lock %s: %w", dir, err)
	}
	defer unlock()
	if has() {
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

// findArea walks up from the working directory to tests/<area>/<script>.
func findArea(area, script string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		candidate := filepath.Join(dir, "tests", area)
		if _, err := os.Stat(filepath.Join(candidate, script)); err == nil {
			return candidate, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("nodehook: tests/%s/%s not found above the working directory", area, script)
		}
		dir = parent
	}
}
