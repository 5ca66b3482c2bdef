package registry_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/rpc"
)

// noInternals fails if msg names Redis's address, a herald: key or the hash
// of a key.
func noInternals(t *testing.T, what, msg string, e *env, hashes ...string) {
	t.Helper()
	for _, bad := range append([]string{e.redis.Addr(), "herald:", "dial tcp", "connection refused"}, hashes...) {
		if strings.Contains(msg, bad) {
			t.Errorf("%s: the answer %q names %q", what, msg, bad)
		}
	}
}

// With Redis down, every answer is UNAVAILABLE (503 over HTTP) with a
// generic message: no Redis address, key name or key hash.
func TestRedisDownAnswersUnavailableWithoutInternals(t *testing.T) {
	e := start(t)
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Description: "An invoice was paid."})
	app, secret := e.createApp(t, &registryv1.Application{Name: "shop", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	hash := auth.HashSecret(secret)
	if err := e.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	appClient := e.as(secret)
	calls := map[string]func() error{
		"admin ListEventTypes": func() error {
			_, err := e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))
			return err
		},
		"admin GetApplication": func() error {
			_, err := e.admin.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))
			return err
		},
		"admin AuthenticateKey": func() error {
			_, err := e.admin.AuthenticateKey(ctx, connect.NewRequest(&registryv1.AuthenticateKeyRequest{KeyHash: hash}))
			return err
		},
		"application ListEventTypes": func() error {
			_, err := appClient.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))
			return err
		},
	}
	for what, call := range calls {
		err := call()
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("%s: %v, want UNAVAILABLE", what, err)
		}
		if err != nil {
			noInternals(t, what, err.Error(), e, hash)
		}
	}
	for _, key := range []string{adminKey, secret} {
		req, _ := http.NewRequest("GET", rpc.BaseURL(e.addr)+"/asyncapi.json", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("asyncapi.json: %d %s, want 503", res.StatusCode, body)
		}
		noInternals(t, "asyncapi.json", string(body), e, hash)
	}
}

// call returns the error of one RPC as an application (nil on success).
type call struct {
	what string
	do   func() error
}

// Another application's ids answer exactly what unknown ids answer:
// NOT_FOUND with the same message (the id asked for), never 403.
func TestOtherApplicationsIDsAreNotFound(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Description: "An invoice was paid."})
	a, aSecret := e.createApp(t, &registryv1.Application{Name: "a", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	b, bSecret := e.createApp(t, &registryv1.Application{Name: "b", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	bSub := must(e.as(bSecret).CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		Types: []string{"billing.invoice.paid"}, Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
	}}))).msg(t).GetSubscription()
	bKeys := must(e.admin.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: b.GetId()}))).msg(t).GetKeys()
	asA := e.as(aSecret)
	_ = a
	calls := func(appID, keyID, subID string) []call {
		return []call{
			{"GetApplication", func() error {
				_, err := asA.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: appID}))
				return err
			}},
			{"CreateKey", func() error {
				_, err := asA.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: appID}))
				return err
			}},
			{"ListKeys", func() error {
				_, err := asA.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: appID}))
				return err
			}},
			{"RevokeKey", func() error {
				_, err := asA.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: keyID}))
				return err
			}},
			{"ListSubscriptions", func() error {
				_, err := asA.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{ApplicationId: appID}))
				return err
			}},
			{"CreateSubscription", func() error {
				_, err := asA.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
					ApplicationId: appID, Types: []string{"billing.invoice.paid"}, Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
				}}))
				return err
			}},
			{"GetSubscription", func() error {
				_, err := asA.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: subID}))
				return err
			}},
			{"DeleteSubscription", func() error {
				_, err := asA.DeleteSubscription(ctx, connect.NewRequest(&registryv1.DeleteSubscriptionRequest{Id: subID}))
				return err
			}},
		}
	}
	const unknownApp, unknownKey, unknownSub = "app_doesnotexist", "key_doesnotexist", "sub_doesnotexist"
	others := calls(b.GetId(), bKeys[0].GetId(), bSub.GetId())
	unknowns := calls(unknownApp, unknownKey, unknownSub)
	for i := range others {
		errOther, errUnknown := others[i].do(), unknowns[i].do()
		wantCode(t, others[i].what+" of another application", errOther, connect.CodeNotFound)
		wantCode(t, unknowns[i].what+" of an unknown id", errUnknown, connect.CodeNotFound)
		if errOther == nil || errUnknown == nil {
			continue
		}
		// The same answer, up to the id asked for.
		same := strings.NewReplacer(b.GetId(), "ID", bKeys[0].GetId(), "ID", bSub.GetId(), "ID").Replace(errOther.Error()) ==
			strings.NewReplacer(unknownApp, "ID", unknownKey, "ID", unknownSub, "ID").Replace(errUnknown.Error())
		if !same {
			t.Errorf("%s: another application's id answers %q, an unknown one %q", others[i].what, errOther, errUnknown)
		}
	}
	// Nothing of B's changed.
	if keys := must(e.admin.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: b.GetId()}))).msg(t).GetKeys(); len(keys) != 1 || keys[0].GetRevokeTime() != nil {
		t.Errorf("B's keys: %v", keys)
	}
	must(e.admin.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: bSub.GetId()}))).msg(t)
}

// asyncapi.json?application= answers an application key only for its own
// application; another application's id is 404, as an unknown one is. The
// operator may name any application.
func TestAsyncAPIOfAnotherApplicationIsNotFound(t *testing.T) {
	e := start(t)
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Description: "An invoice was paid."})
	e.createType(t, &registryv1.EventType{Name: "secret.plan.changed", Description: "B's own business."})
	a, aSecret := e.createApp(t, &registryv1.Application{Name: "a", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	b, _ := e.createApp(t, &registryv1.Application{Name: "b", Grants: []*registryv1.Grant{subscribe("secret.*"), publish("secret.*")}})
	get := func(key, app string) (int, string) {
		req, _ := http.NewRequest("GET", rpc.BaseURL(e.addr)+"/asyncapi.json?application="+app, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body)
	}
	if status, body := get(aSecret, b.GetId()); status != http.StatusNotFound || strings.Contains(body, "secret.plan.changed") {
		t.Errorf("A asks for B's document: %d %s, want 404", status, body)
	}
	if status, _ := get(aSecret, "app_doesnotexist"); status != http.StatusNotFound {
		t.Errorf("A asks for an unknown application: %d, want 404", status)
	}
	if status, body := get(aSecret, a.GetId()); status != http.StatusOK || !strings.Contains(body, "billing.invoice.paid") {
		t.Errorf("A asks for its own document: %d %s", status, body)
	}
	if status, body := get(adminKey, b.GetId()); status != http.StatusOK || !strings.Contains(body, "secret.plan.changed") {
		t.Errorf("the operator asks for B's document: %d %s", status, body)
	}
}

// A schema that refers to itself without reading deeper into the data
// ({"$ref":"#"}) would refuse every event: the registry refuses it when
// the type or a new schema version is created.
func TestSelfReferentialSchemaIsRefused(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	_, err := e.admin.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "billing.loop.made", Description: "Never valid.", Schema: `{"$ref":"#"}`,
	}}))
	wantCode(t, "create a type with {\"$ref\":\"#\"}", err, connect.CodeInvalidArgument, "refers to itself")
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Description: "An invoice was paid."})
	_, err = e.admin.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{
		EventType: "billing.invoice.paid", Schema: `{"allOf":[{"$ref":"#"}]}`,
	}))
	wantCode(t, "a new version with a self-reference", err, connect.CodeInvalidArgument, "refers to itself")
}
