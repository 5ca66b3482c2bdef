package bench

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestRunClusterSmall runs `herald bench publish --cluster 1,3` with tiny
// numbers and two routers: both cluster sizes, every phase, the types
// spread over the masters, the checks and the 3-vs-1 ratio in the report.
func TestRunClusterSmall(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	rep, err := RunCluster(context.Background(), ClusterOptions{
		Masters: []int{1, 3}, Events: 120, Batch: 20, Concurrency: 4, PayloadBytes: 200, Types: 3, Routers: 2,
		RouterBin: exe, RouterEnv: []string{routerChildEnv + "=1"}, Timeout: 90 * time.Second, Progress: &progress,
	})
	if err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, progress.String())
	}
	if len(rep.Runs) != 2 || rep.Runs[0].Masters != 1 || rep.Runs[1].Masters != 3 {
		t.Fatalf("runs: %+v", rep.Runs)
	}
	for _, r := range rep.Runs {
		var names []string
		for _, p := range r.Phases {
			names = append(names, p.Name)
			if p.Events != 120 || p.EventsPerS <= 0 || p.Router == nil || p.Router.CPUSeconds < 0 || p.RedisCPUSeconds == nil {
				t.Errorf("%d masters, %s: %+v", r.Masters, p.Name, p)
			}
		}
		if strings.Join(names, ",") != "herald-batch,herald-single,xadd-batch" {
			t.Errorf("%d masters: phases %v", r.Masters, names)
		}
		if len(r.TypesPerMaster) != r.Masters {
			t.Errorf("%d masters: types per master %v", r.Masters, r.TypesPerMaster)
		}
	}
	if len(rep.Checks) != 6 {
		t.Errorf("checks: %+v", rep.Checks)
	}
	if len(rep.Goals) != 2 {
		t.Errorf("goals: %+v", rep.Goals)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"herald bench publish --cluster", "herald-batch: 3 masters vs 1 >= 1.6x", "3 masters: types per master: 127.0.0.1:"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, table.String())
		}
	}
}
