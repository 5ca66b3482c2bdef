// Package codegentest checks what platform/codegen writes with the real
// compilers: TypeScript's tsc (pinned in the repository's tests/codegen,
// installed with npm ci on first use) and the go command, in a throwaway
// module with no dependencies. Tests fail, never skip, without node or go.
package codegentest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/codegen"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
)

// TSCArgs are the compiler options every check uses: strict, ES2022
// modules as Node runs them.
var TSCArgs = []string{"--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext", "--skipLibCheck"}

// WriteFiles writes files into dir.
func WriteFiles(t testing.TB, dir string, files ...codegen.File) {
	t.Helper()
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.Name), f.Content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TSDir returns a new directory for TypeScript files, marked as holding
// ES modules (a package.json with "type": "module"), so that what tsc
// emits there runs under node.
func TSDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	WriteFiles(t, dir, codegen.File{Name: "package.json", Content: []byte(`{"type":"module","private":true}` + "\n")})
	return dir
}

// TSC runs tsc with TSCArgs and args (file names, relative to dir, and
// options such as --noEmit or --outDir) in dir, and returns its output
// and whether it found no error.
func TSC(t testing.TB, dir string, args ...string) (string, bool) {
	t.Helper()
	area := nodehook.Install(t, "codegen", "typescript")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(area, "node_modules", ".bin", "tsc"), append(append([]string{}, TSCArgs...), args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("tsc: %v\n%s", err, out)
		}
		return string(out), false
	}
	return string(out), true
}

// Node runs node on script (relative to dir) and returns its output and
// whether it exited 0.
func Node(t testing.TB, dir, script string) (string, bool) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found on PATH (install Node.js >= 18): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("node %s: %v\n%s", script, err, out)
		}
		return string(out), false
	}
	return string(out), true
}

// GoModule writes a module example.com/consumer with the generated files
// as its package pkg (a subdirectory) and main as its main.go (which
// imports "example.com/consumer/<pkg>"), and returns its directory.
func GoModule(t testing.TB, pkg string, files []codegen.File, main string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, pkg), 0o755); err != nil {
		t.Fatal(err)
	}
	WriteFiles(t, filepath.Join(dir, pkg), files...)
	WriteFiles(t, dir, codegen.File{Name: "go.mod", Content: []byte("module example.com/consumer\n\ngo 1.22\n")})
	if main != "" {
		WriteFiles(t, dir, codegen.File{Name: "main.go", Content: []byte(main)})
	}
	return dir
}

// Go runs the go command with args in dir, alone (GOWORK=off), with
// GOFLAGS=-mod=mod and no module proxy (the generated code needs only the
// standard library), and returns its output and whether it succeeded.
func Go(t testing.TB, dir string, args ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "GOWORK" && k != "GOFLAGS" && k != "GOPROXY" && k != "GOTOOLCHAIN" {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local")
	out, err := cmd.CombinedOutput()
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), false
	}
	return string(out), true
}
