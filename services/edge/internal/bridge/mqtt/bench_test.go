package mqtt

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
)

// The benchmarks publish b.N events at QoS 1 to one private mosquitto and
// wait for every PUBACK: through the Sink (as the engine would use it,
// with up to max_in_flight = 1000 unconfirmed), and directly with a plain
// paho client publishing the same records, rendered the same way, one at a
// time from one goroutine or from as many as the sink has lanes.
//
//	go test -run '^$' -bench MQTT -benchtime 20000x ./internal/bridge/mqtt/

func BenchmarkMQTTSink(b *testing.B) {
	for _, v := range versions {
		b.Run(vname(v), func(b *testing.B) {
			addr, _ := testutil.Mosquitto(b)
			s, err := NewSink(sinkConfig(addr, v, 0, 1))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(context.Background())
			warm := sendAll(b, s, messages(0, 1, 1))
			if warm[0] != nil {
				b.Fatal(warm[0])
			}
			msgs := messages(0, b.N, b.N)
			inFlight := make(chan struct{}, 1000)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var failed error
			done := func(i int, err error) {
				if err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
				}
				<-inFlight
				wg.Done()
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for from := 0; from < len(msgs); from += 100 {
				batch := msgs[from:min(from+100, len(msgs))]
				for range batch {
					inFlight <- struct{}{}
				}
				wg.Add(len(batch))
				s.Send(context.Background(), batch, done)
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			if failed != nil {
				b.Fatal(failed)
			}
		})
	}
}

func BenchmarkMQTTDirect(b *testing.B) {
	for _, v := range versions {
		for _, workers := range []int{1, maxLanes} {
			b.Run(fmt.Sprintf("%s/publishers=%d", vname(v), workers), func(b *testing.B) {
				addr, _ := testutil.Mosquitto(b)
				st, err := parse(sinkConfig(addr, v, 0, 1), sinkConfig(addr, v, 0, 1).Bridge.GetDirection())
				if err != nil {
					b.Fatal(err)
				}
				msgs := messages(0, b.N, b.N)
				var publish func(o *outgoing) error
				if v == 5 {
					c := mustPlain5(b, addr, "direct", false, nil)
					publish = func(o *outgoing) error {
						p := &paho.Publish{QoS: 1, Topic: o.topic, Payload: o.payload, Properties: &paho.PublishProperties{ContentType: o.contentType, User: o.user}}
						_, err := c.Publish(context.Background(), p)
						return err
					}
				} else {
					c := plain3(b, addr, "direct", nil)
					publish = func(o *outgoing) error {
						tok := c.Publish(o.topic, 1, false, o.payload)
						tok.Wait()
						return tok.Error()
					}
				}
				next := make(chan *bridge.Message, 1000)
				var wg sync.WaitGroup
				var mu sync.Mutex
				var failed error
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for m := range next {
							// The same rendering as the sink's (a plain
							// publisher has to encode the event too).
							o, err := render(&st, m.Event)
							if err == nil {
								err = publish(&o)
							}
							if err != nil {
								mu.Lock()
								failed = err
								mu.Unlock()
							}
						}
					}()
				}
				for i := range msgs {
					next <- &msgs[i]
				}
				close(next)
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
				if failed != nil {
					b.Fatal(failed)
				}
			})
		}
	}
}
