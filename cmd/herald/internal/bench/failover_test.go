package bench

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// TestRunFailoverSmall runs `herald bench failover` with tiny numbers: a
// master of a 3x2 cluster killed mid-publish, its shard accepting publishes
// again after its replica's promotion, and the log checked against every
// acknowledged event of every shard.
func TestRunFailoverSmall(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	rep, err := RunFailover(context.Background(), FailoverOptions{
		NodeTimeout: time.Second, Callers: 1, Batch: 5, Before: 500 * time.Millisecond, After: 500 * time.Millisecond, PayloadBytes: 100,
		RouterBin: exe, RouterEnv: []string{routerChildEnv + "=1"}, Timeout: 2 * time.Minute, Progress: &progress,
	})
	ignoredAcks := rep != nil && strings.Contains(rep.Settings.ReplicaAcks, "does not know it")
	switch {
	case errors.Is(err, ErrCheckFailed) && ignoredAcks:
		// Without replica acknowledgements an acknowledged event may die
		// with its master: reported, not a failure of the bench.
		t.Logf("events lost with the router ignoring %s: %+v", ReplicaAcksVar, rep.Checks)
	case err != nil:
		t.Fatalf("%v\nreport: %+v\nprogress:\n%s", err, rep, progress.String())
	}
	if rep.Killed == "" || rep.FailoverSeconds <= 0 || rep.Acked == 0 || len(rep.Checks) != 3 {
		t.Errorf("report: %+v", rep)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "kill -> first accepted publish on that shard: ") {
		t.Errorf("table:\n%s", table.String())
	}
	t.Logf("\n%s", table.String())
}
