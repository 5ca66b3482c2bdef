package kafka

import (
	"context"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The sink against a plain franz-go producer writing the same records
// (same headers, key and value; idempotent, acks=all, uncompressed, 1000
// in flight) to the same in-process kfake broker: what the bridge adds is
// building each record from the event and the done bookkeeping.
//
//	go test -run '^$' -bench 'Kafka' -benchtime 50000x ./services/edge/internal/bridge/kafka

const benchTopic = "bench"

func BenchmarkKafkaSink(b *testing.B) {
	for _, mode := range []struct {
		name       string
		structured bool
	}{{"binary", false}, {"structured", true}} {
		b.Run(mode.name, func(b *testing.B) {
			k := startCluster(b, 3, []string{benchTopic})
			s, err := newSink(kafkaCfg(k.addr, benchTopic, sinkDir, mode.structured), options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close(context.Background())
			msgs := messages(0, 1000, 50)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var failed error
			done := func(_ int, err error) {
				if err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
				}
				wg.Done()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for sent := 0; sent < b.N; {
				n := min(100, b.N-sent)
				from := sent % len(msgs)
				n = min(n, len(msgs)-from)
				wg.Add(n)
				s.Send(context.Background(), msgs[from:from+n], done)
				sent += n
			}
			wg.Wait()
			b.StopTimer()
			if failed != nil {
				b.Fatal(failed)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

func BenchmarkKafkaDirect(b *testing.B) {
	k := startCluster(b, 3, []string{benchTopic})
	// The sink's own records (binary mode), built once.
	s := &Sink{topic: benchTopic}
	var recs []*kgo.Record
	for _, m := range messages(0, 1000, 50) {
		r, err := s.record(m)
		if err != nil {
			b.Fatal(err)
		}
		recs = append(recs, r)
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(k.addr),
		kgo.DefaultProduceTopic(benchTopic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.MaxBufferedRecords(defaultMaxInFlight),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
	)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed error
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			failed = err
			mu.Unlock()
		}
		wg.Done()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		r := *recs[i%len(recs)] // franz-go sets a record's partition and offset: one per produce
		wg.Add(1)
		cl.Produce(context.Background(), &r, promise)
	}
	wg.Wait()
	b.StopTimer()
	if failed != nil {
		b.Fatal(failed)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// What the sink spends building one record from an event, apart from
// any I/O: most of the gap between the two above.
func BenchmarkKafkaRecord(b *testing.B) {
	msgs := messages(0, 1000, 50)
	for _, mode := range []struct {
		name       string
		structured bool
	}{{"binary", false}, {"structured", true}} {
		b.Run(mode.name, func(b *testing.B) {
			s := &Sink{topic: benchTopic, structured: mode.structured}
			b.ReportAllocs()
			for i := range b.N {
				if _, err := s.record(msgs[i%len(msgs)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
