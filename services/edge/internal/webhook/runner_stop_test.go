package webhook

import (
	"context"
	"testing"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// A runner stopped before its goroutine has started (the engine stops a
// runner as soon as its endpoint changes, or at shutdown) ends when it
// starts: stop does not wait for ever, and stop and run do not race on the
// runner's cancel func.
func TestRunnerStoppedBeforeItRuns(t *testing.T) {
	e := &Engine{o: Options{LeaseTTL: time.Second}} // no lease slots: a running runner waits for one until it is stopped
	r := newRunner(e, &registryv1.Subscription{Id: "sub_1", Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: "https://hooks.example.com/"}}})
	stopped := make(chan struct{})
	go func() { r.stop(); close(stopped) }()
	time.Sleep(50 * time.Millisecond) // let stop go first, as when sync stops a runner it has just started
	go r.run(context.Background())
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop called before run never returned: the runner was not cancelled")
	}
}

// A runner stopped while it runs ends too.
func TestRunnerStoppedWhileItRuns(t *testing.T) {
	e := &Engine{o: Options{LeaseTTL: time.Second}}
	r := newRunner(e, &registryv1.Subscription{Id: "sub_1", Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: "https://hooks.example.com/"}}})
	go r.run(context.Background())
	stopped := make(chan struct{})
	go func() { r.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop never returned")
	}
}
