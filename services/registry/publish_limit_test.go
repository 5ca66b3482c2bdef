package registry_test

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"google.golang.org/protobuf/proto"
)

// TestPublishLimit checks that an application's publish limit is stored,
// returned and replaced like its other fields.
func TestPublishLimit(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	limit := &registryv1.PublishLimit{EventsPerSecond: 50, Burst: 200}
	app, _ := e.createApp(t, &registryv1.Application{Name: "shop", Grants: []*registryv1.Grant{publish("shop.*")}, PublishLimit: limit})
	if !proto.Equal(app.GetPublishLimit(), limit) {
		t.Errorf("created with publish_limit %v, want %v", app.GetPublishLimit(), limit)
	}
	got := must(e.admin.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t).GetApplication()
	if !proto.Equal(got.GetPublishLimit(), limit) {
		t.Errorf("read back publish_limit %v, want %v", got.GetPublishLimit(), limit)
	}

	update := func(l *registryv1.PublishLimit) *registryv1.Application {
		t.Helper()
		in := proto.Clone(app).(*registryv1.Application)
		in.PublishLimit = l
		app = must(e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: in}))).msg(t).GetApplication()
		return app
	}
	oneSecond := &registryv1.PublishLimit{EventsPerSecond: 10} // burst 0: one second's worth
	if got := update(oneSecond).GetPublishLimit(); !proto.Equal(got, oneSecond) {
		t.Errorf("updated publish_limit %v, want %v", got, oneSecond)
	}
	if got := update(nil).GetPublishLimit(); got != nil {
		t.Errorf("publish_limit %v after an update without one, want none", got)
	}
	got = must(e.admin.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t).GetApplication()
	if got.GetPublishLimit() != nil {
		t.Errorf("read back publish_limit %v after removing it, want none", got.GetPublishLimit())
	}
}

// TestPublishLimitRefusals checks that out-of-range publish limits are
// refused on create and update, say which field is wrong, and write nothing.
func TestPublishLimitRefusals(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, _ := e.createApp(t, &registryv1.Application{Name: "shop"})

	for _, c := range []struct {
		name      string
		limit     *registryv1.PublishLimit
		fragments []string
	}{
		{"zero rate", &registryv1.PublishLimit{}, []string{"publish_limit.events_per_second is 0", "between 1 and 1000000"}},
		{"zero rate with a burst", &registryv1.PublishLimit{Burst: 10}, []string{"publish_limit.events_per_second is 0"}},
		{"negative rate", &registryv1.PublishLimit{EventsPerSecond: -5}, []string{"publish_limit.events_per_second is -5"}},
		{"rate over the maximum", &registryv1.PublishLimit{EventsPerSecond: 1_000_001}, []string{"publish_limit.events_per_second is 1000001"}},
		{"negative burst", &registryv1.PublishLimit{EventsPerSecond: 10, Burst: -1}, []string{"publish_limit.burst is -1", "between 0"}},
		{"burst over the maximum", &registryv1.PublishLimit{EventsPerSecond: 10, Burst: 10_000_001}, []string{"publish_limit.burst is 10000001", "10000000"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.revision(t)
			_, err := e.admin.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{
				Application: &registryv1.Application{Name: "limited", PublishLimit: c.limit},
			}))
			wantCode(t, "create", err, connect.CodeInvalidArgument, c.fragments...)
			in := proto.Clone(app).(*registryv1.Application)
			in.PublishLimit = c.limit
			_, err = e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: in}))
			wantCode(t, "update", err, connect.CodeInvalidArgument, c.fragments...)
			if after := e.revision(t); after != before {
				t.Errorf("the catalog revision moved from %d to %d: a refused request wrote something", before, after)
			}
		})
	}

	// The bounds themselves are accepted.
	for _, l := range []*registryv1.PublishLimit{{EventsPerSecond: 1}, {EventsPerSecond: 1_000_000, Burst: 10_000_000}} {
		if _, err := e.admin.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{
			Application: &registryv1.Application{Name: "at the bounds", PublishLimit: l},
		})); err != nil {
			t.Errorf("create with publish_limit %v: %v", l, err)
		}
	}
}
