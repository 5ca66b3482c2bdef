package testutil

import (
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestRabbitMQStopStart checks that a queue and its persistent message
// survive Stop and Start on the same ports.
func TestRabbitMQStopStart(t *testing.T) {
	url, ctl := RabbitMQ(t)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("keep", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.PublishWithDeferredConfirm("", "keep", true, false, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte("x")})
	if err != nil || !dc.Wait() {
		t.Fatalf("publish: %v", err)
	}
	conn.Close()
	start := time.Now()
	if err := ctl.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(start))
	if _, err := amqp.Dial(url); err == nil {
		t.Fatal("dial succeeded with the node stopped")
	}
	start = time.Now()
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("started again in %v", time.Since(start))
	conn, err = amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err = conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive("keep", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != 1 {
		t.Fatalf("queue holds %d messages after restart, want 1", q.Messages)
	}
}
