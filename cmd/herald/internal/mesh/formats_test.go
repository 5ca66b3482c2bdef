package mesh_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hamba/avro/v2"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

const refundAvro = `{"type":"record","name":"Refund","namespace":"billing","fields":[{"name":"id","type":"string"},{"name":"cents","type":"long"},{"name":"note","type":["null","string"],"default":null}]}`

// TestPayloadFormats publishes a Protobuf, an Avro and a bytes event through
// the whole mesh and receives them over SSE (data_base64, and with
// ?data=json protojson and Avro's JSON encoding), long polling and a
// webhook that asked for JSON data.
func TestPayloadFormats(t *testing.T) {
	e := startWebhooks(t)
	ctx := context.Background()
	for _, et := range []*registryv1.EventType{
		{Name: "billing.order.placed", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, ProtobufSchema: &registryv1.ProtobufSchema{
			Message: "shop.v1.OrderPlaced", Files: map[string]string{"shop/v1/order.proto": `syntax = "proto3"; package shop.v1;
message OrderPlaced { string order_id = 1; int64 total_cents = 2; repeated string skus = 3; }`}}},
		{Name: "billing.refund.issued", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, Schema: refundAvro},
		{Name: "billing.scan.stored", SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_NONE, ContentType: "application/octet-stream"},
	} {
		if _, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et})); err != nil {
			t.Fatal(err)
		}
	}
	recv := newReceiver(t, nil)
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: recv.URL, JsonData: true}, "billing.order.placed", "billing.refund.issued", "billing.scan.stored")

	const types = "types=billing.order.placed,billing.refund.issued,billing.scan.stored&access_token="
	plain, closePlain := e.subscribe(types+e.appKey, "")
	defer closePlain()
	asJSON, closeJSON := e.subscribe(types+e.appKey+"&data=json", "")
	defer closeJSON()

	order := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "o-1")
	order = protowire.AppendVarint(protowire.AppendTag(order, 2, protowire.VarintType), 4200)
	order = protowire.AppendString(protowire.AppendTag(order, 3, protowire.BytesType), "sku-1")
	refund, err := avro.Marshal(avro.MustParse(refundAvro), map[string]any{"id": "r-1", "cents": int64(250), "note": "late"})
	if err != nil {
		t.Fatal(err)
	}
	scan := []byte{0x89, 'P', 'N', 'G', 0, 0xff}
	e.publish(
		&eventv1.CloudEvent{Id: "o-1", Source: "//shop", SpecVersion: "1.0", Type: "billing.order.placed",
			Data: &eventv1.CloudEvent_ProtoData{ProtoData: &anypb.Any{TypeUrl: "type.googleapis.com/shop.v1.OrderPlaced", Value: order}}},
		&eventv1.CloudEvent{Id: "r-1", Source: "//shop", SpecVersion: "1.0", Type: "billing.refund.issued", Data: &eventv1.CloudEvent_BinaryData{BinaryData: refund}},
		&eventv1.CloudEvent{Id: "s-1", Source: "//shop", SpecVersion: "1.0", Type: "billing.scan.stored", Data: &eventv1.CloudEvent_BinaryData{BinaryData: scan}},
	)

	b64 := base64.StdEncoding.EncodeToString
	wantPlain := map[string]map[string]string{
		"o-1": {"data_base64": b64(order), "datacontenttype": "application/protobuf"},
		"r-1": {"data_base64": b64(refund)},
		"s-1": {"data_base64": b64(scan), "datacontenttype": "application/octet-stream"},
	}
	wantJSON := map[string]string{
		"o-1": `{"orderId":"o-1","totalCents":"4200","skus":["sku-1"]}`,
		"r-1": `{"id":"r-1","cents":250,"note":{"string":"late"}}`,
	}
	check := func(t *testing.T, how string, raw []byte, json bool) {
		t.Helper()
		var ce map[string]any
		if err := jsonUnmarshal(raw, &ce); err != nil {
			t.Fatalf("%s: not JSON: %s", how, raw)
		}
		id, _ := ce["id"].(string)
		if w, ok := wantJSON[id]; json && ok {
			got, _ := jsonMarshal(ce["data"])
			var want any
			_ = jsonUnmarshal([]byte(w), &want)
			wantText, _ := jsonMarshal(want)
			if string(got) != string(wantText) || ce["datacontenttype"] != "application/json" || ce["data_base64"] != nil {
				t.Errorf("%s: event %s: %s, want data %s as application/json", how, id, raw, w)
			}
			return
		}
		for k, v := range wantPlain[id] {
			if ce[k] != v {
				t.Errorf("%s: event %s: %s is %v, want %s (%s)", how, id, k, ce[k], v, raw)
			}
		}
		if ce["data"] != nil {
			t.Errorf("%s: event %s has data besides data_base64: %s", how, id, raw)
		}
	}
	for i := 0; i < 3; i++ {
		check(t, "SSE", []byte(next(t, plain).data), false)
		check(t, "SSE ?data=json", []byte(next(t, asJSON).data), true)
	}

	for _, mode := range []string{"binary", "json"} {
		v := url.Values{"types": {"billing.order.placed,billing.refund.issued,billing.scan.stored"}, "cursor": {"0"}, "data": {mode}}
		req, _ := http.NewRequest("GET", rpc.BaseURL(e.common.EdgeAddr)+"/v1/poll?"+v.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+e.appKey)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var answer struct {
			Events []struct {
				Event jsonRaw `json:"event"`
			} `json:"events"`
		}
		err = json.NewDecoder(res.Body).Decode(&answer)
		res.Body.Close()
		if err != nil || res.StatusCode != http.StatusOK || len(answer.Events) != 3 {
			t.Fatalf("poll data=%s: %d %v %v", mode, res.StatusCode, err, answer)
		}
		for _, ev := range answer.Events {
			check(t, "poll data="+mode, ev.Event, mode == "json")
		}
	}
	req, _ := http.NewRequest("GET", rpc.BaseURL(e.common.EdgeAddr)+"/v1/stream?data=xml&"+types+e.appKey, nil)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != http.StatusBadRequest {
		t.Fatalf("data=xml: %v %v", res.StatusCode, err)
	}

	// StreamEvents with json_data: the events carry text_data JSON.
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	client := edgev1connect.NewEdgeServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.EdgeAddr), rpc.ClientOptions(e.appKey)...)
	s, err := client.StreamEvents(sctx, connect.NewRequest(&edgev1.StreamEventsRequest{
		Types: []string{"billing.order.placed", "billing.refund.issued"}, Cursor: "0", JsonData: true}))
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < 2 && s.Receive(); {
		ev := s.Msg().GetEvent()
		if ev == nil {
			continue
		}
		n++
		raw, _ := cloudevent.MarshalJSON(ev)
		check(t, "StreamEvents json_data", raw, true)
		if _, ok := ev.GetData().(*eventv1.CloudEvent_TextData); !ok {
			t.Errorf("StreamEvents json_data: event %s data is %T", ev.GetId(), ev.GetData())
		}
	}
	s.Close()

	testutil.Eventually(t, 20*time.Second, func() bool { return len(recv.got()) == 3 }, "three webhook deliveries")
	for _, h := range recv.got() {
		check(t, "webhook", h.body, true)
	}

	// A second Avro version: events are rendered with the version they
	// were written with, older ones included.
	refundV2 := `{"type":"record","name":"Refund","namespace":"billing","fields":[{"name":"id","type":"string"},{"name":"cents","type":"long"},{"name":"note","type":["null","string"],"default":null},{"name":"reason","type":"string","default":""}]}`
	if _, err := e.reg.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{EventType: "billing.refund.issued", Schema: refundV2})); err != nil {
		t.Fatal(err)
	}
	refund2, err := avro.Marshal(avro.MustParse(refundV2), map[string]any{"id": "r-2", "cents": int64(5), "note": nil, "reason": "damaged"})
	if err != nil {
		t.Fatal(err)
	}
	var r2 []string
	testutil.Eventually(t, 10*time.Second, func() bool {
		res, err := e.router.Publish(withKey(e.appKey), &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{
			{Id: "r-2", Source: "//shop", SpecVersion: "1.0", Type: "billing.refund.issued", Data: &eventv1.CloudEvent_BinaryData{BinaryData: refund2}}}})
		if err != nil || res.GetResults()[0].GetError() != nil {
			return false // the router has not seen version 2 yet
		}
		r2 = append(r2, res.GetResults()[0].GetCursor())
		return true
	}, "version 2 data accepted")
	wantJSON["r-2"] = `{"id":"r-2","cents":5,"note":null,"reason":"damaged"}`
	v := url.Values{"types": {"billing.refund.issued"}, "cursor": {"0"}, "data": {"json"}}
	var answer struct {
		Events []struct {
			Event jsonRaw `json:"event"`
		} `json:"events"`
	}
	// The edge may not have read r-2 from the log yet: poll until it has.
	testutil.Eventually(t, 10*time.Second, func() bool {
		req, _ := http.NewRequest("GET", rpc.BaseURL(e.common.EdgeAddr)+"/v1/poll?"+v.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+e.appKey)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		answer.Events = nil
		if err := json.NewDecoder(res.Body).Decode(&answer); err != nil {
			t.Fatal(err)
		}
		return len(answer.Events) == 2
	}, "both Avro events polled")
	for _, ev := range answer.Events {
		check(t, "poll data=json, two Avro versions", ev.Event, true)
	}
}

type jsonRaw = json.RawMessage

var (
	jsonUnmarshal = json.Unmarshal
	jsonMarshal   = json.Marshal
)
