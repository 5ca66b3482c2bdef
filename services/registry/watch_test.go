package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
)

// watcher receives a Watch stream in the background.
type watcher struct {
	msgs chan *registryv1.WatchResponse // closed when the stream ends
	err  error                          // why it ended; read after msgs is closed
	stop context.CancelFunc
}

func (e *env) watch(t *testing.T, from int64) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := e.admin.Watch(ctx, connect.NewRequest(&registryv1.WatchRequest{FromRevision: from}))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &watcher{msgs: make(chan *registryv1.WatchResponse, 1000), stop: cancel}
	go func() {
		defer close(w.msgs)
		defer stream.Close()
		for stream.Receive() {
			w.msgs <- stream.Msg()
		}
		w.err = stream.Err()
	}()
	t.Cleanup(func() {
		cancel()
		for range w.msgs {
		}
	})
	return w
}

// next returns the next message, failing the test if none comes soon.
func (w *watcher) next(t *testing.T) *registryv1.WatchResponse {
	t.Helper()
	select {
	case m, ok := <-w.msgs:
		if !ok {
			t.Fatalf("the watch ended: %v", w.err)
		}
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no watch message within 5s")
		return nil
	}
}

// quiet fails the test if a message comes within d.
func (w *watcher) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m, ok := <-w.msgs:
		if ok {
			t.Errorf("unexpected watch message: %v", m)
		}
	case <-time.After(d):
	}
}

// ended waits for the stream to end and returns its error.
func (w *watcher) ended(t *testing.T) error {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-w.msgs:
			if !ok {
				return w.err
			}
		case <-timeout:
			t.Fatal("the watch did not end within 5s")
		}
	}
}

// snapshot reads a snapshot up to snapshot_complete, checking that every
// message carries the snapshot's revision.
func (w *watcher) snapshot(t *testing.T) (rev int64, msgs []*registryv1.WatchResponse) {
	t.Helper()
	for {
		m := w.next(t)
		if m.GetSnapshotComplete() {
			for _, s := range msgs {
				if s.GetRevision() != m.GetRevision() {
					t.Errorf("snapshot message at revision %d, the snapshot is at %d: %v", s.GetRevision(), m.GetRevision(), s)
				}
			}
			return m.GetRevision(), msgs
		}
		msgs = append(msgs, m)
	}
}

func TestWatchFromZero(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"})
	must(e.admin.CreateProduct(ctx, connect.NewRequest(&registryv1.CreateProductRequest{Product: &registryv1.Product{Name: "pro", EventTypes: []string{"billing.*"}}}))).msg(t)
	app, secret := e.createApp(t, &registryv1.Application{Name: "shop", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	sub := must(e.admin.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: app.GetId(), Types: []string{"billing.*"}, Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
	}}))).msg(t).GetSubscription()

	w := e.watch(t, 0)
	rev, msgs := w.snapshot(t)
	if rev != e.revision(t) {
		t.Errorf("snapshot at revision %d, the catalog is at %d", rev, e.revision(t))
	}
	var kinds []string
	for _, m := range msgs {
		switch c := m.GetChange().(type) {
		case *registryv1.WatchResponse_Domain:
			kinds = append(kinds, "domain "+c.Domain.GetName())
		case *registryv1.WatchResponse_EventType:
			kinds = append(kinds, "type "+c.EventType.GetName())
			if c.EventType.GetSchema() != invoiceSchema && !strings.HasPrefix(c.EventType.GetName(), "herald.") {
				t.Errorf("snapshot type without its schema: %v", c.EventType)
			}
		case *registryv1.WatchResponse_Product:
			kinds = append(kinds, "product "+c.Product.GetName())
		case *registryv1.WatchResponse_Application:
			kinds = append(kinds, "application "+c.Application.GetName())
		case *registryv1.WatchResponse_Key:
			kinds = append(kinds, "key")
			if c.Key.GetKeyHash() != auth.HashSecret(secret) || c.Key.GetKey().GetSecret() != "" {
				t.Errorf("snapshot key: %v", c.Key)
			}
		case *registryv1.WatchResponse_Subscription:
			kinds = append(kinds, "subscription")
		default:
			t.Errorf("unexpected snapshot message: %v", m)
		}
	}
	want := []string{"domain billing", "domain herald", "type billing.invoice.paid", "type herald.endpoint.disabled", "type herald.endpoint.ping", "type herald.invoice.finalized", "type herald.quota.warning", "product pro", "application shop", "key", "subscription"}
	if len(kinds) != len(want) {
		t.Fatalf("snapshot: %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Errorf("snapshot: %v, want %v", kinds, want)
		}
	}

	// Live changes follow, one revision after another.
	e.createType(t, &registryv1.EventType{Name: "identity.user.created"})
	keyID := keyID(t, e, app.GetId(), secret)
	must(e.admin.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: keyID}))).msg(t)
	must(e.admin.DeleteSubscription(ctx, connect.NewRequest(&registryv1.DeleteSubscriptionRequest{Id: sub.GetId()}))).msg(t)

	checks := []func(*registryv1.WatchResponse) bool{
		func(m *registryv1.WatchResponse) bool { return m.GetDomain().GetName() == "identity" },
		func(m *registryv1.WatchResponse) bool {
			return m.GetEventType().GetName() == "identity.user.created" && m.GetEventType().GetRevision() == m.GetRevision()
		},
		func(m *registryv1.WatchResponse) bool {
			k := m.GetKey()
			return k.GetKey().GetId() == keyID && k.GetKey().GetRevokeTime() != nil && k.GetKeyHash() == auth.HashSecret(secret)
		},
		func(m *registryv1.WatchResponse) bool {
			return m.GetDeleted().GetKind() == "subscription" && m.GetDeleted().GetName() == sub.GetId()
		},
	}
	for i, check := range checks {
		m := w.next(t)
		if m.GetRevision() != rev+int64(i)+1 {
			t.Errorf("change %d at revision %d, want %d", i, m.GetRevision(), rev+int64(i)+1)
		}
		if !check(m) {
			t.Errorf("change %d: %v", i, m)
		}
	}
	w.quiet(t, 300*time.Millisecond)
}

func TestWatchFromRevision(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	first := e.createType(t, &registryv1.EventType{Name: "billing.invoice.created"})
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"})
	must(e.admin.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: &registryv1.Domain{Name: "identity"}}))).msg(t)

	// Exactly the changes after the revision, then live ones.
	w := e.watch(t, first.GetRevision())
	if m := w.next(t); m.GetEventType().GetName() != "billing.invoice.paid" || m.GetRevision() != first.GetRevision()+1 {
		t.Errorf("first change: %v", m)
	}
	if m := w.next(t); m.GetDomain().GetName() != "identity" || m.GetRevision() != first.GetRevision()+2 {
		t.Errorf("second change: %v", m)
	}
	w.quiet(t, 300*time.Millisecond)
	first.Description = "Issued."
	must(e.admin.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: first}))).msg(t)
	if m := w.next(t); m.GetEventType().GetDescription() != "Issued." || m.GetRevision() != first.GetRevision()+3 {
		t.Errorf("live change: %v", m)
	}

	// From the current revision: nothing until something changes.
	w2 := e.watch(t, e.revision(t))
	w2.quiet(t, 300*time.Millisecond)
}

func TestWatchRefusesRevisionsItCannotServe(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"})
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.created"})
	current := e.revision(t)

	// Trim the change log past revision 1.
	if err := e.rdb.XTrimMinID(ctx, "herald:{registry}:changes", "3-0").Err(); err != nil {
		t.Fatal(err)
	}
	err := e.watch(t, 1).ended(t)
	wantCode(t, "watch from a trimmed revision", err, connect.CodeFailedPrecondition, "revision too old, watch from 0")
	if m := e.watch(t, 2).next(t); m.GetRevision() != 3 {
		t.Errorf("watch from 2 after trimming up to 3: %v", m)
	}
	err = e.watch(t, current+10).ended(t)
	wantCode(t, "watch from the future", err, connect.CodeFailedPrecondition, "watch from 0")

	// A log trimmed to nothing at all.
	if err := e.rdb.Del(ctx, "herald:{registry}:changes").Err(); err != nil {
		t.Fatal(err)
	}
	err = e.watch(t, 1).ended(t)
	wantCode(t, "watch from an emptied log", err, connect.CodeFailedPrecondition, "watch from 0")
	w := e.watch(t, current)
	w.quiet(t, 200*time.Millisecond)
	rev, _ := e.watch(t, 0).snapshot(t)
	if rev != current {
		t.Errorf("snapshot at %d, want %d", rev, current)
	}
}

func TestWatchEndsAtShutdown(t *testing.T) {
	t.Parallel()
	e := start(t)
	w := e.watch(t, 0)
	w.snapshot(t)
	began := time.Now()
	e.stop()
	if err := w.ended(t); err != nil && connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("the stream ended with %v", err)
	}
	if d := time.Since(began); d > 4*time.Second {
		t.Errorf("shutdown took %v with a watch open", d)
	}
}

// TestChangeLogLayout checks the documented layout of the change log, which
// tools outside the registry may read.
func TestChangeLogLayout(t *testing.T) {
	t.Parallel()
	e := start(t)
	// The herald domain and its types were registered at start.
	before := e.revision(t)
	created := e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"})
	entries, err := e.rdb.XRange(context.Background(), "herald:{registry}:changes", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(entries)) != before+2 {
		t.Fatalf("change log: %v", entries)
	}
	last := entries[len(entries)-1]
	if last.ID != itoa(created.GetRevision())+"-0" || last.Values["rev"] != itoa(created.GetRevision()) || last.Values["change"] == nil {
		t.Errorf("change log entry: %v", last)
	}
	if n, err := e.rdb.XLen(context.Background(), "herald:{registry}:changes").Result(); err != nil || n != before+2 {
		t.Errorf("length %d, %v", n, err)
	}
}
