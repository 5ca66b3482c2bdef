package subscription

import (
	"strings"
	"testing"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const testSub = "sub_0123"

func TestAckIDRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		ref  ref
		want string
	}{
		{"log stream", ref{stream: eventlog.StreamKey("shop.order.created"), id: "1700000000000-0"}, "shop.order.created/1700000000000-0"},
		{"partition", ref{stream: eventlog.PartitionKey("shop.order.created", 3), id: "1700000000000-7"}, "shop.order.created#3/1700000000000-7"},
		{"largest partition", ref{stream: eventlog.PartitionKey("a.b", 9999), id: "1-1"}, "a.b#9999/1-1"},
		{"replay stream", ref{stream: ReplayKey(testSub), id: "1700000000001-2"}, "~/1700000000001-2"},
		{"largest id", ref{stream: eventlog.StreamKey("a.b"), id: "18446744073709551615-18446744073709551615"}, "a.b/18446744073709551615-18446744073709551615"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := ackID(testSub, c.ref)
			if got != c.want {
				t.Fatalf("ackID(%v) = %q, want %q", c.ref, got, c.want)
			}
			back, err := parseAckID(testSub, got)
			if err != nil {
				t.Fatalf("parseAckID(%q): %v", got, err)
			}
			if back != c.ref {
				t.Fatalf("parseAckID(%q) = %v, want %v", got, back, c.ref)
			}
		})
	}
}

// Ack ids do not name their subscription: the request does. The replay
// tag therefore always means the replay stream of the subscription the
// request names, never another subscription's keys.
func TestAckIDIsRelativeToTheSubscription(t *testing.T) {
	id := ackID("sub_a", ref{stream: ReplayKey("sub_a"), id: "5-1"})
	r, err := parseAckID("sub_b", id)
	if err != nil {
		t.Fatal(err)
	}
	if r.stream != ReplayKey("sub_b") {
		t.Fatalf("sub_a's replay ack id parsed for sub_b names %q, want %q", r.stream, ReplayKey("sub_b"))
	}
	// A log stream's ack id names the same entry for every subscription.
	id = ackID("sub_a", ref{stream: eventlog.StreamKey("a.b"), id: "5-1"})
	if r, err := parseAckID("sub_b", id); err != nil || r.stream != eventlog.StreamKey("a.b") {
		t.Fatalf("parseAckID(sub_b, %q) = %v, %v", id, r, err)
	}
}

func TestParseAckIDRefuses(t *testing.T) {
	for _, s := range []string{
		"",
		"/",
		"nonsense",
		"shop.order.created",                 // no slash
		"shop.order.created-1700000000000-0", // no slash either
		"shop.order.created/",                // no entry id
		"/1700000000000-0",                   // no tag
		"shop.order.created/1700000000000",   // an id without a sequence: never one Redis delivered
		"shop.order.created/0",
		"shop.order.created/abc-1",
		"shop.order.created/1-abc",
		"shop.order.created/-1",
		"shop.order.created/1-",
		"shop.order.created/1-2-3",
		"shop.order.created/+1-2",
		"shop.order.created/ 1-2",
		"shop.order.created/1-2 ",
		"shop.order.created/18446744073709551616-0", // ms past uint64
		"shop/1-1",                                  // one segment: not a type name
		"Shop.Order/1-1",                            // upper case
		"shop..order/1-1",                           // empty segment
		"shop.*/1-1",                                // a pattern, not a type
		"shop.order}/1-1",                           // would break out of the hash tag
		"{shop.order}/1-1",
		"shop.order#/1-1", // empty partition
		"shop.order#x/1-1",
		"shop.order#-1/1-1",
		"shop.order#12345/1-1", // more partitions than a type may have
		"shop.order#1#2/1-1",
		"#1/1-1",
		"~~/1-1",
		"~#1/1-1",
		"~/1", // replay ids are full ids too
		"~/x-1",
		"herald:sub:{sub_other}:replay/1-1", // another subscription's keys
		"{sub_other}:replay/1-1",
		"herald:log:{shop.order}/1-1",       // a stream key, not a tag
		"shop.order/created/1-1",            // the tag holds a slash
		strings.Repeat("a.", 200) + "b/1-1", // longer than a type name may be
	} {
		if r, err := parseAckID(testSub, s); err == nil {
			t.Errorf("parseAckID(%q) = %v, want an error", s, r)
		} else if !strings.Contains(err.Error(), "not an ack id") {
			t.Errorf("parseAckID(%q): %v, want errAckID", s, err)
		}
	}
}

func FuzzParseAckID(f *testing.F) {
	for _, s := range []string{
		"shop.order.created/1700000000000-0", "shop.order.created#3/1-2", "~/1-1", "a.b#0/0-0",
		"", "/", "~", "~/", "a.b", "a.b/1", "a.b/1-2-3", "a.b#/1-1", "a.b##1/1-1", "a.b/01-1",
		"herald:sub:{x}:replay/1-1", "a.b}/1-1", "a.b/1-1/1-1", "\xff/1-1",
	} {
		f.Add(testSub, s)
	}
	f.Add("", "~/1-1")
	f.Add("x}:y", "~/1-1")
	f.Fuzz(func(t *testing.T, subID, s string) {
		r, err := parseAckID(subID, s) // must not panic
		if err != nil {
			return
		}
		if got := ackID(subID, r); got != s {
			t.Fatalf("parseAckID(%q, %q) = %v, and back to %q", subID, s, r, got)
		}
		if _, err := eventlog.ParseID(r.id); err != nil || !strings.Contains(r.id, "-") {
			t.Fatalf("parseAckID(%q) accepted entry id %q", s, r.id)
		}
		// It names this subscription's replay stream or a type's log stream,
		// nothing else.
		if r.stream == ReplayKey(subID) {
			return
		}
		if !strings.HasPrefix(r.stream, "herald:log:{") || !strings.HasSuffix(r.stream, "}") {
			t.Fatalf("parseAckID(%q) names stream %q", s, r.stream)
		}
		if err := eventtype.ValidateName(eventlog.TypeOfStream(r.stream)); err != nil {
			t.Fatalf("parseAckID(%q) names stream %q of no valid type: %v", s, r.stream, err)
		}
	})
}

func TestIDBefore(t *testing.T) {
	cases := []struct {
		ms   int64
		want string
	}{
		{-5, "0"},
		{0, "0"},
		{1, "0-18446744073709551615"},
		{1700000000000, "1699999999999-18446744073709551615"},
	}
	for _, c := range cases {
		if got := idBefore(c.ms); got != c.want {
			t.Errorf("idBefore(%d) = %q, want %q", c.ms, got, c.want)
		}
	}
	// Everything stamped at ms or later is after it; everything before is not.
	const ms = 1700000000000
	before := eventlog.MustParseID(idBefore(ms))
	for _, id := range []eventlog.ID{{Ms: ms}, {Ms: ms, Seq: 5}, {Ms: ms + 1}} {
		if !before.Less(id) {
			t.Errorf("idBefore(%d) = %v is not before %v", int64(ms), before, id)
		}
	}
	for _, id := range []eventlog.ID{{Ms: ms - 1}, {Ms: ms - 1, Seq: 1 << 62}, {Ms: 0}} {
		if !id.Less(before) && id != before {
			t.Errorf("%v is after idBefore(%d) = %v", id, int64(ms), before)
		}
	}
}

func TestStartID(t *testing.T) {
	at := time.UnixMilli(1700000000123)
	cases := []struct {
		name string
		sub  *registryv1.Subscription
		want string
	}{
		{"cursor", &registryv1.Subscription{
			Start:      &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "1700000000000-4"}},
			CreateTime: timestamppb.New(at),
		}, "1700000000000-4"},
		{"time", &registryv1.Subscription{
			Start:      &registryv1.StartPosition{Position: &registryv1.StartPosition_Time{Time: timestamppb.New(at)}},
			CreateTime: timestamppb.New(at.Add(time.Hour)),
		}, "1700000000122-18446744073709551615"},
		{"time at the epoch", &registryv1.Subscription{
			Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Time{Time: timestamppb.New(time.Unix(0, 0))}},
		}, "0"},
		{"time before the epoch", &registryv1.Subscription{
			Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Time{Time: timestamppb.New(time.Unix(-100, 0))}},
		}, "0"},
		{"create time", &registryv1.Subscription{CreateTime: timestamppb.New(at)}, "1700000000122-18446744073709551615"},
		{"empty start, create time", &registryv1.Subscription{Start: &registryv1.StartPosition{}, CreateTime: timestamppb.New(at)}, "1700000000122-18446744073709551615"},
		{"nothing", &registryv1.Subscription{}, "$"},
		{"nil", nil, "$"},
	}
	for _, c := range cases {
		if got := startID(c.sub); got != c.want {
			t.Errorf("%s: startID = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestPolicyOf(t *testing.T) {
	def := policy{ackTimeout: 30 * time.Second, maxAttempts: 10}
	cases := []struct {
		name string
		sub  *registryv1.Subscription
		want policy
	}{
		{"nil", nil, def},
		{"no policy", &registryv1.Subscription{}, def},
		{"empty policy", &registryv1.Subscription{Delivery: &registryv1.DeliveryPolicy{}}, def},
		{"zero timeout", &registryv1.Subscription{Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(0), MaxAttempts: 3}},
			policy{ackTimeout: 30 * time.Second, maxAttempts: 3}},
		{"negative values", &registryv1.Subscription{Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(-time.Second), MaxAttempts: -1}}, def},
		{"set", &registryv1.Subscription{Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(250 * time.Millisecond), MaxAttempts: 1}},
			policy{ackTimeout: 250 * time.Millisecond, maxAttempts: 1}},
		{"timeout only", &registryv1.Subscription{Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(time.Hour)}},
			policy{ackTimeout: time.Hour, maxAttempts: 10}},
	}
	for _, c := range cases {
		if got := policyOf(c.sub); got != c.want {
			t.Errorf("%s: policyOf = %+v, want %+v", c.name, got, c.want)
		}
	}
}
