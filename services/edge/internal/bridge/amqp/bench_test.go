package amqp

import (
	"context"
	"fmt"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
)

// Both benchmarks publish the same persistent binary-mode messages to one
// durable queue on the shared node, with at most benchWindow unconfirmed
// (the engine's default max_in_flight), and count a message once the
// broker confirmed it.
const (
	benchWindow = 1000
	benchBatch  = 100
)

func benchMessages() []bridge.Message {
	ms := make([]bridge.Message, benchWindow)
	for i := range ms {
		ms[i] = messages(jsonEvent(fmt.Sprint(i), "bench.event.sent"))[0]
	}
	return ms
}

func benchQueue(b *testing.B) (url string, ch *amqp.Channel) {
	url = testutil.SharedRabbitMQ(b)
	ch = client(b, url)
	declare(b, ch, "bench", "amq.topic", "bench.#", nil) // and purge it
	return url, ch
}

func BenchmarkAMQPSink(b *testing.B) {
	url, _ := benchQueue(b)
	s, err := NewSink(sinkConfig(url, "", "", false))
	if err != nil {
		b.Fatal(err)
	}
	defer closeSink(b, s)
	ms := benchMessages()
	window := make(chan struct{}, benchWindow)
	failed := make(chan error, 1)
	done := func(i int, err error) {
		if err != nil {
			select {
			case failed <- err:
			default:
			}
		}
		<-window
	}
	b.ResetTimer()
	for sent := 0; sent < b.N; {
		n := min(benchBatch, b.N-sent)
		off := sent % benchWindow
		n = min(n, benchWindow-off)
		for range n {
			window <- struct{}{}
		}
		s.Send(context.Background(), ms[off:off+n], done)
		sent += n
	}
	for range benchWindow {
		window <- struct{}{}
	}
	b.StopTimer()
	select {
	case err := <-failed:
		b.Fatal(err)
	default:
	}
}

func BenchmarkAMQPDirect(b *testing.B) {
	url, _ := benchQueue(b)
	ch := client(b, url)
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, benchWindow))
	ms := benchMessages()
	inflight := 0
	wait := func() {
		c := <-confirms
		if !c.Ack {
			b.Fatal("nack")
		}
		inflight--
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for inflight >= benchWindow {
			wait()
		}
		ev := ms[i%benchWindow].Event
		bin := cloudevent.ToBinary(ev)
		h := make(amqp.Table, len(bin.Attributes))
		for k, v := range bin.Attributes {
			h["cloudEvents:"+k] = v
		}
		err := ch.Publish("amq.topic", ev.GetType(), true, false, amqp.Publishing{
			Headers: h, ContentType: bin.ContentType, Body: bin.Body, DeliveryMode: amqp.Persistent, MessageId: ev.GetId(),
		})
		if err != nil {
			b.Fatal(err)
		}
		inflight++
	}
	for inflight > 0 {
		wait()
	}
}
