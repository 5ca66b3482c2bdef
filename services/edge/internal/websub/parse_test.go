package websub

import (
	"strconv"
	"testing"
	"time"
)

// RFC 4231, test case 2.
func TestSignature(t *testing.T) {
	got := Signature([]byte("Jefe"), []byte("what do ya want for nothing?"))
	if want := "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"; got != want {
		t.Fatalf("Signature = %s, want %s", got, want)
	}
}

func testHub() *Hub {
	return &Hub{o: Options{PublicURL: "https://herald.example", Lease: time.Hour, MaxLease: 24 * time.Hour}}
}

// hub.topic comes from outside: whatever it is, it is either a topic URL
// of this hub, whose type gives the same URL back, or refused.
func FuzzTopicType(f *testing.F) {
	for _, s := range []string{"https://herald.example/v1/topics/billing.invoice.paid", "https://herald.example/v1/topics/",
		"https://herald.example/v1/topics/Billing", "https://other.example/v1/topics/a.b", "", "https://herald.example/v1/topics/a.b/../c"} {
		f.Add(s)
	}
	h := testHub()
	f.Fuzz(func(t *testing.T, topic string) {
		typ, err := h.topicType(topic)
		if err != nil {
			return
		}
		if h.TopicURL(typ) != topic {
			t.Fatalf("topic %q gave type %q, whose topic is %q", topic, typ, h.TopicURL(typ))
		}
	})
}

// hub.lease_seconds comes from outside: the lease granted is always
// between a second and the longest.
func FuzzLease(f *testing.F) {
	for _, s := range []string{"", "1", "0", "-1", "86401", "9999999999999999999999", "1e3", " 5"} {
		f.Add(s)
	}
	h := testHub()
	f.Fuzz(func(t *testing.T, v string) {
		d, err := h.lease(v)
		if err != nil {
			return
		}
		if d < time.Second || d > h.o.MaxLease {
			t.Fatalf("lease %q gave %s", v, d)
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n <= int64(h.o.MaxLease/time.Second) && d != time.Duration(n)*time.Second {
			t.Fatalf("lease %q gave %s", v, d)
		}
	})
}
