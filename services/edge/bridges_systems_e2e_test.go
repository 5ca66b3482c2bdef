package edge_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/parquet-go/parquet-go"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/durationpb"
)

func quickRetries() []*durationpb.Duration {
	var out []*durationpb.Duration
	// Long enough to outlast a rabbitmq-server restart (about 15 s here):
	// an outage the test makes must end in delivery, not dead letters.
	for range 50 {
		out = append(out, durationpb.New(1500*time.Millisecond))
	}
	return out
}

func fromStart() *registryv1.StartPosition {
	return &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}}
}

func sinkOf(types ...string) *registryv1.BridgeSink {
	return &registryv1.BridgeSink{Types: types, RetrySchedule: quickRetries(), Start: fromStart()}
}

// logged counts the events of the bridge test type in the log, by id.
func (m *bridgeMesh) logged() map[string]int {
	msgs, err := m.rdb.XRange(context.Background(), eventlog.StreamKeys(bridgeType, 1)[0], "-", "+").Result()
	if err != nil {
		m.t.Fatal(err)
	}
	out := map[string]int{}
	for _, msg := range msgs {
		e, err := eventlog.Decode(eventlog.StreamKeys(bridgeType, 1)[0], msg)
		if err != nil {
			m.t.Fatal(err)
		}
		out[e.Event.GetId()]++
	}
	return out
}

// sourceSurvivesKill: the edge running a source is killed with SIGKILL
// while it reads; another takes over, and the log ends up with each record
// once (the router's dedupe absorbs what was published and not committed).
func sourceSurvivesKill(t *testing.T, m *bridgeMesh, b *registryv1.Bridge, records int) {
	t.Helper()
	first := m.edge()
	testutil.Eventually(t, 30*time.Second, func() bool { return len(m.logged()) >= records/10 }, "the source publishes")
	first.kill()
	second := m.edge()
	testutil.Eventually(t, 60*time.Second, func() bool { return len(m.logged()) == records }, "every record in the log")
	for id, n := range m.logged() {
		if n != 1 {
			t.Errorf("%s is in the log %d times", id, n)
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return second.status(t, b.GetName()).GetRunning() }, "the second edge runs the source")
}

// deadLetters lists a bridge's dead letters through an edge.
func deadLetters(t *testing.T, p *edgeProc, name string) []*edgev1.BridgeDeadLetter {
	t.Helper()
	res, err := p.bridges().ListBridgeDeadLetters(context.Background(), connect.NewRequest(&edgev1.ListBridgeDeadLettersRequest{Bridge: name}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetDeadLetters()
}

// --- Kafka: an in-process kfake cluster, read by a franz-go consumer.

func startKafka(t *testing.T, topics ...string) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func kafkaReader(t *testing.T, brokers []string, topic string) farSide {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
				for _, h := range r.Headers {
					if h.Key == "ce_id" {
						col.add(string(h.Value))
					}
				}
			})
		}
	}()
	t.Cleanup(func() { cancel(); <-done; cl.Close() })
	return col.snapshot
}

func TestKafkaSinkSurvivesAKilledEdge(t *testing.T) {
	m := startBridgeMesh(t)
	brokers := startKafka(t, "orders")
	b := m.create(&registryv1.Bridge{Name: "to-kafka", Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: brokers, Topic: "orders"}}, Sink: sinkOf(bridgeType)})
	sinkSurvivesKill(t, m, b, kafkaReader(t, brokers, "orders"), nil, nil)
}

func TestKafkaSourceSurvivesAKilledEdge(t *testing.T) {
	m := startBridgeMesh(t)
	brokers := startKafka(t, "orders-in")
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("orders-in"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 3000
	for i := range n {
		cl.Produce(context.Background(), &kgo.Record{Value: fmt.Appendf(nil, `{"n":%d}`, i)}, nil)
	}
	cl.Produce(context.Background(), &kgo.Record{Value: []byte(`{"n":"not a number"}`)}, nil)
	if err := cl.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	b := m.create(&registryv1.Bridge{Name: "from-kafka", Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE,
		System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: brokers, Topic: "orders-in"}},
		Source: &registryv1.BridgeSource{EventType: bridgeType, BatchSize: 50}})
	sourceSurvivesKill(t, m, b, n)
	p := m.edge()
	testutil.Eventually(t, 20*time.Second, func() bool { return len(deadLetters(t, p, "from-kafka")) == 1 }, "the refused record dead-lettered")
	if d := deadLetters(t, p, "from-kafka")[0]; !strings.Contains(d.GetReason(), "schema") || string(d.GetRaw()) != `{"n":"not a number"}` {
		t.Fatalf("dead letter: %v", d)
	}
}

// --- MQTT: a private mosquitto, read by a paho subscriber with a
// persistent session.

func mqttReader(t *testing.T, addr, topic string) farSide {
	t.Helper()
	col := newCollector()
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("reader-" + t.Name()).SetCleanSession(false).
		SetAutoReconnect(true).SetConnectRetry(true).SetMaxReconnectInterval(200 * time.Millisecond).SetResumeSubs(true)
	opts.SetDefaultPublishHandler(func(_ mqtt.Client, msg mqtt.Message) {})
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); tok.Wait() && tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	if tok := c.Subscribe(topic, 1, func(_ mqtt.Client, msg mqtt.Message) {
		// MQTT 5 user properties are not visible to a 3.1.1 client: the
		// sink runs in structured mode here, and the id is in the JSON.
		p := string(msg.Payload())
		if i := strings.Index(p, `"id":"`); i >= 0 {
			rest := p[i+6:]
			col.add(rest[:strings.IndexByte(rest, '"')])
		}
	}); tok.Wait() && tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	return col.snapshot
}

func TestMQTTSinkSurvivesAKilledEdgeAndABrokerOutage(t *testing.T) {
	m := startBridgeMesh(t)
	addr, broker := testutil.Mosquitto(t)
	far := mqttReader(t, addr, "herald/#")
	sink := sinkOf(bridgeType)
	sink.ContentMode = registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED
	b := m.create(&registryv1.Bridge{Name: "to-mqtt", Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://" + addr}}, Sink: sink})
	sinkSurvivesKill(t, m, b, far, broker.Stop, broker.Start)
}

func TestMQTTSourceSurvivesAKilledEdge(t *testing.T) {
	m := startBridgeMesh(t)
	addr, _ := testutil.Mosquitto(t)
	b := m.create(&registryv1.Bridge{Name: "from-mqtt", Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE,
		System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://" + addr, Topic: "orders/#"}},
		Source: &registryv1.BridgeSource{EventType: bridgeType, BatchSize: 50}})
	first := m.edge()
	testutil.Eventually(t, 20*time.Second, func() bool { return first.status(t, b.GetName()).GetRunning() }, "an edge runs the source")
	time.Sleep(time.Second) // subscribed: the persistent session keeps what comes from now on
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("pub-" + t.Name()))
	if tok := pub.Connect(); tok.Wait() && tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	const n = 2000
	go func() {
		for i := range n {
			pub.Publish(fmt.Sprintf("orders/%d", i%7), 1, false, fmt.Sprintf(`{"n":%d}`, i)).Wait()
		}
		pub.Publish("orders/bad", 1, false, `{"n":true}`).Wait()
	}()
	testutil.Eventually(t, 30*time.Second, func() bool { return len(m.logged()) >= n/10 }, "the source publishes")
	first.kill()
	second := m.edge()
	testutil.Eventually(t, 90*time.Second, func() bool { return len(m.logged()) == n }, "every message in the log")
	for id, c := range m.logged() {
		if c != 1 {
			t.Errorf("%s is in the log %d times", id, c)
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(deadLetters(t, second, "from-mqtt")) == 1 }, "the refused message dead-lettered")
}

// --- AMQP: a private rabbitmq-server, read by an amqp091 consumer of a
// durable queue bound to the sink's exchange.

func amqpReader(t *testing.T, url, queue string) farSide {
	t.Helper()
	col := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	setup := func() (*amqp.Connection, <-chan amqp.Delivery, error) {
		conn, err := amqp.Dial(url)
		if err != nil {
			return nil, nil, err
		}
		ch, err := conn.Channel()
		if err == nil {
			_, err = ch.QueueDeclare(queue, true, false, false, false, nil)
		}
		if err == nil {
			err = ch.QueueBind(queue, "#", "amq.topic", false, nil)
		}
		var in <-chan amqp.Delivery
		if err == nil {
			in, err = ch.Consume(queue, "", false, false, false, false, nil)
		}
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		return conn, in, nil
	}
	conn, in, err := setup()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			for d := range in {
				col.add(d.MessageId)
				_ = d.Ack(false)
			}
			conn.Close()
			for ctx.Err() == nil { // the broker went away: again once it is back
				if conn, in, err = setup(); err == nil {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		if conn != nil {
			conn.Close()
		}
		<-done
	})
	return col.snapshot
}

func TestAMQPSinkSurvivesAKilledEdgeAndABrokerOutage(t *testing.T) {
	m := startBridgeMesh(t)
	url, broker := testutil.RabbitMQ(t)
	far := amqpReader(t, url, "orders")
	b := m.create(&registryv1.Bridge{Name: "to-amqp", Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, Secret: "guest",
		System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: strings.Replace(url, "guest:guest@", "guest@", 1)}}, Sink: sinkOf(bridgeType)})
	sinkSurvivesKill(t, m, b, far, func() {
		if err := broker.Stop(); err != nil {
			t.Fatal(err)
		}
	}, func() {
		if err := broker.Start(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestAMQPSourceSurvivesAKilledEdge(t *testing.T) {
	m := startBridgeMesh(t)
	url, _ := testutil.RabbitMQ(t)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("orders-in", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	const n = 3000
	for i := range n {
		if err := ch.PublishWithContext(context.Background(), "", "orders-in", false, false, amqp.Publishing{
			MessageId: fmt.Sprintf("m%d", i), ContentType: "application/json", Body: fmt.Appendf(nil, `{"n":%d}`, i), DeliveryMode: amqp.Persistent,
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.PublishWithContext(context.Background(), "", "orders-in", false, false, amqp.Publishing{MessageId: "bad", ContentType: "application/cloudevents+json", Body: []byte("{not json")}); err != nil {
		t.Fatal(err)
	}
	b := m.create(&registryv1.Bridge{Name: "from-amqp", Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE, Secret: "guest",
		System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: strings.Replace(url, "guest:guest@", "guest@", 1), Queue: "orders-in"}},
		Source: &registryv1.BridgeSource{EventType: bridgeType, BatchSize: 50}})
	sourceSurvivesKill(t, m, b, n)
	p := m.edge()
	testutil.Eventually(t, 20*time.Second, func() bool { return len(deadLetters(t, p, "from-amqp")) == 1 }, "the unreadable message dead-lettered")
}

// --- Lake: Parquet files in a directory, read with parquet-go (DuckDB
// reads them in the lake package's own tests).

type lakeID struct {
	ID string `parquet:"id"`
}

func lakeReader(t *testing.T, dir string) farSide {
	return func() map[string]int {
		out := map[string]int{}
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".parquet") || strings.HasPrefix(d.Name(), ".") {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				return nil
			}
			defer f.Close()
			r := parquet.NewGenericReader[lakeID](f)
			defer r.Close()
			rows := make([]lakeID, 256)
			for {
				n, err := r.Read(rows)
				for _, row := range rows[:n] {
					out[row.ID]++
				}
				if errors.Is(err, io.EOF) || err != nil {
					break
				}
			}
			return nil
		})
		return out
	}
}

func TestLakeSinkSurvivesAKilledEdgeWithEachEventOnce(t *testing.T) {
	m := startBridgeMesh(t)
	dir := t.TempDir()
	b := m.create(&registryv1.Bridge{Name: "to-lake", Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		System: &registryv1.Bridge_Lake{Lake: &registryv1.LakeBridge{Directory: dir, MaxFileBytes: 1 << 20, MaxFileAge: durationpb.New(time.Second)}},
		Sink:   sinkOf(bridgeType)})
	far := lakeReader(t, dir)
	sinkSurvivesKill(t, m, b, far, nil, nil)
	for id, n := range far() {
		if n != 1 {
			t.Errorf("%s is in the lake %d times", id, n)
		}
	}
}
