package registry_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/testutil"
	"google.golang.org/protobuf/types/known/durationpb"
)

// authenticate asks the registry, as router and edge do, which key a
// secret is.
func (e *env) authenticate(secret string) (*registryv1.Key, error) {
	res, err := e.admin.AuthenticateKey(context.Background(), connect.NewRequest(&registryv1.AuthenticateKeyRequest{KeyHash: auth.HashSecret(secret)}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetKey(), nil
}

func TestKeyRotation(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, oldSecret := e.createApp(t, &registryv1.Application{Name: "shop"})
	self := e.as(oldSecret)

	// The application rotates its own key, keeping the old one for 1s.
	const overlap = time.Second
	requested := time.Now()
	rotated := must(self.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{
		ApplicationId: app.GetId(), RotateOverlap: durationpb.New(overlap),
	}))).msg(t).GetKey()
	newSecret := rotated.GetSecret()
	if newSecret == "" || rotated.GetPrefix() != newSecret[:len(rotated.GetPrefix())] || rotated.GetApplicationId() != app.GetId() {
		t.Fatalf("new key: %v", rotated)
	}
	for _, secret := range []string{oldSecret, newSecret} {
		if k, err := e.authenticate(secret); err != nil || k.GetApplicationId() != app.GetId() || k.GetSecret() != "" {
			t.Fatalf("during the overlap: %v, %v", k, err)
		}
	}

	keys := must(self.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: app.GetId()}))).msg(t).GetKeys()
	if len(keys) != 2 {
		t.Fatalf("keys: %v", keys)
	}
	old, current := keys[0], keys[1]
	if current.GetId() != rotated.GetId() || current.GetExpireTime() != nil {
		t.Errorf("the new key is listed as %v", current)
	}
	if exp := old.GetExpireTime().AsTime(); exp.Before(requested.Add(overlap)) || exp.After(time.Now().Add(overlap)) {
		t.Errorf("the old key expires at %v, want %v after the rotation", exp, overlap)
	}
	for _, k := range keys {
		if k.GetSecret() != "" || k.GetPrefix() == "" {
			t.Errorf("listed key shows its secret or no prefix: %v", k)
		}
	}

	// After the overlap the old key is unknown; the new one still works.
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, err := e.authenticate(oldSecret)
		return connect.CodeOf(err) == connect.CodeNotFound
	}, "the rotated-out key stops authenticating")
	if time.Since(requested) < overlap {
		t.Errorf("the old key stopped working before its overlap ended")
	}
	if _, err := e.authenticate(newSecret); err != nil {
		t.Errorf("the new key: %v", err)
	}

	// Another application can neither see nor touch these keys.
	_, otherSecret := e.createApp(t, &registryv1.Application{Name: "other"})
	other := e.as(otherSecret)
	_, err := other.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: app.GetId()}))
	wantCode(t, "create a key for another application", err, connect.CodeNotFound)
	_, err = other.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: app.GetId()}))
	wantCode(t, "list another application's keys", err, connect.CodeNotFound)
	_, err = other.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: rotated.GetId()}))
	wantCode(t, "revoke another application's key", err, connect.CodeNotFound)
}

func TestRevokeKey(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, first := e.createApp(t, &registryv1.Application{Name: "shop"})
	// A key without rotate_overlap leaves the others alone.
	second := must(e.admin.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: app.GetId()}))).msg(t).GetKey()
	self := e.as(first)
	must(self.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t)

	// The application revokes its second key: unknown at once.
	revoked := must(self.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: second.GetId()}))).msg(t).GetKey()
	if revoked.GetRevokeTime() == nil || revoked.GetSecret() != "" {
		t.Errorf("revoked: %v", revoked)
	}
	_, err := e.authenticate(second.GetSecret())
	wantCode(t, "authenticate a revoked key", err, connect.CodeNotFound)
	if _, err := e.authenticate(first); err != nil {
		t.Fatalf("the other key: %v", err)
	}
	again := must(self.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: second.GetId()}))).msg(t).GetKey()
	if !again.GetRevokeTime().AsTime().Equal(revoked.GetRevokeTime().AsTime()) {
		t.Errorf("revoking twice moved the revocation time")
	}

	// The operator revokes the first: the registry's own routes refuse it
	// too (once its 1s authentication cache lapses).
	must(e.admin.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: keyID(t, e, app.GetId(), first)}))).msg(t)
	_, err = e.authenticate(first)
	wantCode(t, "authenticate the revoked first key", err, connect.CodeNotFound)
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, err := self.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))
		return connect.CodeOf(err) == connect.CodeUnauthenticated
	}, "the registry refuses a revoked key")
	_, err = e.admin.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: "key_nothing"}))
	wantCode(t, "revoke an unknown key", err, connect.CodeNotFound, "key_nothing")
}

// keyID finds the id of an application's key by its secret.
func keyID(t *testing.T, e *env, appID, secret string) string {
	t.Helper()
	k, err := e.authenticate(secret)
	if err != nil || k.GetApplicationId() != appID {
		t.Fatalf("key of %s: %v %v", appID, k, err)
	}
	return k.GetId()
}

// TestConcurrentUpdates runs writers that each increment a counter kept in
// a domain's description, reading it and writing it back with the revision
// they read, and retrying when another writer got there first. No
// increment may be lost.
func TestConcurrentUpdates(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	must(e.admin.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: &registryv1.Domain{Name: "billing", Description: "0"}}))).msg(t)
	const writers = 12
	var updated, aborted atomic.Int64
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range 500 {
				res, err := e.admin.GetDomain(ctx, connect.NewRequest(&registryv1.GetDomainRequest{Name: "billing"}))
				if err != nil {
					t.Error(err)
					return
				}
				d := res.Msg.GetDomain()
				n, _ := strconv.Atoi(d.GetDescription())
				d.Description = strconv.Itoa(n + 1)
				_, err = e.admin.UpdateDomain(ctx, connect.NewRequest(&registryv1.UpdateDomainRequest{Domain: d}))
				if err == nil {
					updated.Add(1)
					return
				}
				if connect.CodeOf(err) != connect.CodeAborted {
					t.Error(err)
					return
				}
				aborted.Add(1)
			}
			t.Error("a writer gave up after 500 attempts")
		})
	}
	wg.Wait()
	d := must(e.admin.GetDomain(ctx, connect.NewRequest(&registryv1.GetDomainRequest{Name: "billing"}))).msg(t).GetDomain()
	if d.GetDescription() != strconv.Itoa(writers) || updated.Load() != writers {
		t.Errorf("counter %s after %d successful updates, want %d", d.GetDescription(), updated.Load(), writers)
	}
	t.Logf("%d updates, %d stale attempts refused", updated.Load(), aborted.Load())

	// Writes to different resources all land, each with its own revision.
	before := e.revision(t)
	for i := range writers {
		wg.Go(func() {
			_, err := e.admin.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
				Name: "billing.thing" + strconv.Itoa(i) + ".happened", Schema: `{}`,
			}}))
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	types := must(e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))).msg(t).GetEventTypes()
	seen := map[int64]bool{}
	things := 0
	for _, et := range types {
		if strings.HasPrefix(et.GetName(), "billing.thing") {
			seen[et.GetRevision()] = true
			things++
		}
	}
	if things != writers || len(seen) != writers || e.revision(t) != before+writers {
		t.Errorf("%d types with %d distinct revisions; revision %d -> %d", len(types), len(seen), before, e.revision(t))
	}
}
