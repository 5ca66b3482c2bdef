package cloudevent

import (
	"testing"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func sample() *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id: "e1", Source: "/billing", SpecVersion: "1.0", Type: "billing.invoice.paid",
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"datacontenttype": strAttr("application/json"),
			"partitionkey":    strAttr("cust-1"),
			"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(time.Date(2026, 12, 3, 10, 0, 0, 5, time.UTC))}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: `{"amount":12}`},
	}
}

func TestBinaryRoundTrip(t *testing.T) {
	for _, ev := range []*eventv1.CloudEvent{
		sample(),
		{Id: "b", Source: "s", SpecVersion: "1.0", Type: "t", Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{"datacontenttype": strAttr("application/octet-stream")}, Data: &eventv1.CloudEvent_BinaryData{BinaryData: []byte{0, 0xff, 1}}},
		{Id: "n", Source: "s", SpecVersion: "1.0", Type: "t"},
	} {
		got, err := FromBinary(ToBinary(ev))
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, ev) {
			t.Fatalf("round trip:\n got %v\nwant %v", got, ev)
		}
	}
}

func TestStructuredRoundTrip(t *testing.T) {
	ev := sample()
	ev.Attributes["retries"] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeInteger{CeInteger: 3}}
	ev.Attributes["urgent"] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean{CeBoolean: true}}
	bin := &eventv1.CloudEvent{Id: "b", Source: "s", SpecVersion: "1.0", Type: "t", Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{"datacontenttype": strAttr("application/octet-stream")}, Data: &eventv1.CloudEvent_BinaryData{BinaryData: []byte{0, 0xff}}}
	for _, want := range []*eventv1.CloudEvent{ev, bin} {
		b, err := MarshalJSON(want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := UnmarshalJSON(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("round trip of %s:\n got %v\nwant %v", b, got, want)
		}
	}
}

func TestUnmarshalJSONRefuses(t *testing.T) {
	for in, why := range map[string]string{
		`{"id":"1","source":"s","type":"t"}`:                                                   "no specversion",
		`{"specversion":"1.0","id":1,"source":"s","type":"t"}`:                                 "id not a string",
		`{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!"}`:             "bad base64",
		`{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}`: "both data",
		`{"specversion":"1.0","id":"1","source":"s","type":"t","time":"yesterday"}`:            "bad time",
		`{"specversion":"1.0","id":"1","source":"s","type":"t"} {}`:                            "trailing",
		`[1]`: "not an object",
	} {
		if _, err := UnmarshalJSON([]byte(in)); err == nil {
			t.Errorf("%s (%s): accepted", in, why)
		}
	}
}

func FuzzUnmarshalJSON(f *testing.F) {
	b, _ := MarshalJSON(sample())
	f.Add(b)
	f.Add([]byte(`{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AA=="}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		ev, err := UnmarshalJSON(in)
		if err != nil {
			return
		}
		// What it accepts is valid and survives a second round.
		out, err := MarshalJSON(ev)
		if err != nil {
			t.Fatal(err)
		}
		again, err := UnmarshalJSON(out)
		if err != nil {
			t.Fatalf("%s -> %s: %v", in, out, err)
		}
		if again.GetId() != ev.GetId() || again.GetType() != ev.GetType() {
			t.Fatalf("%s -> %s changed", in, out)
		}
	})
}
