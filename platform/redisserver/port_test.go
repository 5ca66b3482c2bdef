package redisserver

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
)

// A server started on a port another redis-server holds fails with
// errPortTaken, never returning a Server that talks to the other one.
func TestStartOnATakenPortIsRefused(t *testing.T) {
	ctx := context.Background()
	first, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Kill()
	_, port, _ := net.SplitHostPort(first.Addr())
	p, _ := strconv.Atoi(port)
	second, err := Start(ctx, Options{Dir: t.TempDir(), Port: p})
	if err == nil {
		second.Kill()
		t.Fatal("a second server started on a taken port")
	}
	if !errors.Is(err, errPortTaken) {
		t.Fatalf("err = %v, want errPortTaken", err)
	}
}

// A picked port that turns out taken is picked again: here a cluster
// node's bus port (picked second, after the node's port).
func TestStartPicksAgainWhenThePickedPortIsTaken(t *testing.T) {
	ctx := context.Background()
	first, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Kill()
	_, port, _ := net.SplitHostPort(first.Addr())
	taken, _ := strconv.Atoi(port)
	picks := 0
	pick = func() (int, error) {
		picks++
		if picks == 2 {
			return taken, nil
		}
		return freePort()
	}
	defer func() { pick = freePort }()
	s, err := Start(ctx, Options{Dir: t.TempDir(), Cluster: true, Slots: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Kill()
	if s.opts.ClusterPort == taken || picks < 4 {
		t.Fatalf("started on %s after %d picks (taken: %s)", s.Addr(), picks, first.Addr())
	}
}
