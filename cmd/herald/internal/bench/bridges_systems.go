package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/parquet-go/parquet-go"
	amqp "github.com/rabbitmq/amqp091-go"
)

// amqp compares the AMQP sink with an amqp091 publisher waiting for
// publisher confirms, and the source with a consumer acknowledging each
// batch, on one private rabbitmq-server.
func (r *brRun) amqp(ctx context.Context) error {
	r.progress("starting a private rabbitmq-server")
	url, stop, err := startRabbit(filepath.Join(r.dir, "rabbitmq"))
	if err != nil {
		return err
	}
	defer stop()
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	for _, q := range []struct{ name, key string }{{"sink-herald", "bench.bridge.amqp"}, {"sink-direct", "bench.direct"}, {"source-herald", ""}, {"source-direct", ""}} {
		if _, err := ch.QueueDeclare(q.name, true, false, false, false, nil); err != nil {
			return err
		}
		if q.key != "" {
			if err := ch.QueueBind(q.name, q.key, "amq.topic", false, nil); err != nil {
				return err
			}
		}
	}
	var got atomic.Int64
	deliveries, err := ch.Consume("sink-herald", "", true, false, false, false, nil)
	if err != nil {
		return err
	}
	go func() {
		for range deliveries {
			got.Add(1)
		}
	}()
	noPass := strings.Replace(url, "guest:guest@", "guest@", 1)
	herald, err := r.sink(ctx, "amqp", "bench.bridge.amqp", &registryv1.Bridge{Secret: "guest", System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: noPass}}}, func() int { return int(got.Load()) })
	if err != nil {
		return err
	}
	publish := func(exchange, key string, recs []cloudevent.Binary) (time.Duration, error) {
		pch, err := conn.Channel()
		if err != nil {
			return 0, err
		}
		defer pch.Close()
		if err := pch.Confirm(false); err != nil {
			return 0, err
		}
		start := time.Now()
		var pending []*amqp.DeferredConfirmation
		for _, b := range recs {
			h := amqp.Table{}
			for k, v := range b.Attributes {
				h["cloudEvents:"+k] = v
			}
			dc, err := pch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, amqp.Publishing{
				Headers: h, ContentType: b.ContentType, Body: b.Body, DeliveryMode: amqp.Persistent, MessageId: b.Attributes["id"],
			})
			if err != nil {
				return 0, err
			}
			pending = append(pending, dc)
		}
		for _, dc := range pending {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				return 0, fmt.Errorf("a publish was not confirmed: %v", err)
			}
		}
		return time.Since(start), nil
	}
	el, err := publish("amq.topic", "bench.direct", r.records("bench.bridge.amqp", "amqp-direct"))
	if err != nil {
		return err
	}
	r.result("amqp", "sink", herald, float64(r.o.Events)/el.Seconds(), "log -> edge sink -> amq.topic (persistent, publisher confirms)", "amqp091 publisher with confirms")

	feed := func(queue string) func() error {
		return func() error {
			_, err := publish("", queue, r.records("bench.bridge.amqp.in", "amqp-in-"+queue))
			return err
		}
	}
	herald, err = r.source(ctx, "amqp", "bench.bridge.amqp.in", &registryv1.Bridge{Secret: "guest", System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: noPass, Queue: "source-herald"}}}, feed("source-herald"), true)
	if err != nil {
		return err
	}
	if err := feed("source-direct")(); err != nil {
		return err
	}
	cch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer cch.Close()
	if err := cch.Qos(500, 0, false); err != nil {
		return err
	}
	in, err := cch.Consume("source-direct", "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	start, n := time.Now(), 0
	for d := range in {
		n++
		if n%500 == 0 || n == r.o.Events {
			if err := d.Ack(true); err != nil {
				return err
			}
		}
		if n == r.o.Events {
			break
		}
	}
	r.result("amqp", "source", herald, float64(n)/time.Since(start).Seconds(), "queue -> edge source -> router Publish (validated, deduplicated, in the log)", "amqp091 consumer, prefetch 500, acks per 500")
	return nil
}

// mqtt compares the MQTT sink with a paho QoS 1 publisher, and the source
// with a paho QoS 1 subscriber, on one private mosquitto.
func (r *brRun) mqtt(ctx context.Context) error {
	dir := filepath.Join(r.dir, "mosquitto")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	addr, stop, err := startMosquitto(dir)
	if err != nil {
		return err
	}
	defer stop()
	client := func(id string) (mqtt.Client, error) {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(true).SetOrderMatters(false))
		if t := c.Connect(); t.Wait() && t.Error() != nil {
			return nil, t.Error()
		}
		return c, nil
	}
	sub, err := client("bench-sub")
	if err != nil {
		return err
	}
	defer sub.Disconnect(100)
	var sinkGot, directGot atomic.Int64
	if t := sub.Subscribe("herald/bench/bridge/mqtt", 1, func(mqtt.Client, mqtt.Message) { sinkGot.Add(1) }); t.Wait() && t.Error() != nil {
		return t.Error()
	}
	if t := sub.Subscribe("bench/direct/#", 1, func(mqtt.Client, mqtt.Message) { directGot.Add(1) }); t.Wait() && t.Error() != nil {
		return t.Error()
	}
	herald, err := r.sink(ctx, "mqtt", "bench.bridge.mqtt", &registryv1.Bridge{System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://" + addr, ProtocolVersion: 4}}}, func() int { return int(sinkGot.Load()) })
	if err != nil {
		return err
	}
	pub, err := client("bench-pub")
	if err != nil {
		return err
	}
	defer pub.Disconnect(100)
	publish := func(topic string, evs []*eventv1.CloudEvent) (time.Duration, error) {
		start := time.Now()
		var tokens []mqtt.Token
		for _, ev := range evs {
			b, err := cloudevent.MarshalJSON(ev)
			if err != nil {
				return 0, err
			}
			tokens = append(tokens, pub.Publish(topic, 1, false, b))
		}
		for _, t := range tokens {
			if t.Wait() && t.Error() != nil {
				return 0, t.Error()
			}
		}
		return time.Since(start), nil
	}
	el, err := publish("bench/direct/sink", r.events("bench.bridge.mqtt", "mqtt-direct"))
	if err != nil {
		return err
	}
	r.result("mqtt", "sink", herald, float64(r.o.Events)/el.Seconds(), "log -> edge sink -> mosquitto (MQTT 3.1.1 like the direct client, QoS 1, PUBACK)", "paho publisher, QoS 1, structured JSON")

	herald, err = r.source(ctx, "mqtt", "bench.bridge.mqtt.in", &registryv1.Bridge{System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://" + addr, Topic: "bench/in/#", ProtocolVersion: 4}}},
		func() error { _, err := publish("bench/in/x", r.events("bench.bridge.mqtt.in", "mqtt-in")); return err }, false)
	if err != nil {
		return err
	}
	directGot.Store(0)
	start := time.Now()
	if _, err := publish("bench/direct/source", r.events("bench.bridge.mqtt.in", "mqtt-direct-in")); err != nil {
		return err
	}
	if err := waitFor(ctx, 5*time.Minute, func() bool { return directGot.Load() >= int64(r.o.Events) }); err != nil {
		return fmt.Errorf("the direct subscriber got %d of %d", directGot.Load(), r.o.Events)
	}
	r.result("mqtt", "source", herald, float64(r.o.Events)/time.Since(start).Seconds(), "paho publisher -> mosquitto -> edge source (QoS 1) -> router Publish", "paho publisher -> mosquitto -> paho subscriber (QoS 1)")
	return nil
}

// lakeRows counts the rows of the committed Parquet files under dir.
func lakeRows(dir string) int {
	n := 0
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".parquet") || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return nil
		}
		pf, err := parquet.OpenFile(f, st.Size())
		if err == nil {
			n += int(pf.NumRows())
		}
		return nil
	})
	return n
}

// lakeRow is the direct baseline's row: the columns the lake sink writes.
type lakeRow struct {
	Cursor          string `parquet:"cursor"`
	ID              string `parquet:"id"`
	Source          string `parquet:"source"`
	Type            string `parquet:"type"`
	Time            int64  `parquet:"time,timestamp(millisecond)"`
	DataContentType string `parquet:"datacontenttype"`
	Data            string `parquet:"data"`
}

// lakeDirect writes the events as rows of one Parquet file, synced.
func lakeDirect(dir string, evs []*eventv1.CloudEvent) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	start := time.Now()
	f, err := os.Create(filepath.Join(dir, "direct.parquet"))
	if err != nil {
		return 0, err
	}
	w := parquet.NewGenericWriter[lakeRow](f)
	rows := make([]lakeRow, len(evs))
	now := time.Now().UnixMilli()
	for i, ev := range evs {
		rows[i] = lakeRow{Cursor: fmt.Sprintf("%d-%d", now, i), ID: ev.GetId(), Source: ev.GetSource(), Type: ev.GetType(), Time: now,
			DataContentType: cloudevent.ContentType(ev), Data: ev.GetTextData()}
	}
	if _, err := w.Write(rows); err != nil {
		return 0, err
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}
