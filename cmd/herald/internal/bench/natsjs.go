package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsStream is the benchmark's stream: file storage, one replica,
// JetStream's own dedupe on Nats-Msg-Id over a 2-minute window (the
// default), and everything else default.
const natsStream = "HERALD_BENCH"

// natsServer is a private nats-server with JetStream, on a free port with
// its store in a temporary directory. It never touches a shared server.
type natsServer struct {
	*child
	url     string
	version string
}

func startNATS(ctx context.Context, bin, dir string, env []string) (*natsServer, error) {
	var port int
	for {
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		_, p, _ := net.SplitHostPort(addr)
		if port, _ = strconv.Atoi(p); port != 4222 { // never the machine's shared NATS port
			break
		}
	}
	store := filepath.Join(dir, "jetstream")
	if err := os.MkdirAll(store, 0o700); err != nil {
		return nil, err
	}
	version := ""
	if out, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil {
		version = strings.TrimSpace(string(out))
	}
	c, err := startChild("nats-server", bin,
		[]string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", store, "-n", "herald-bench"},
		env, filepath.Join(dir, "nats-server.log"))
	if err != nil {
		return nil, err
	}
	s := &natsServer{child: c, url: fmt.Sprintf("nats://127.0.0.1:%d", port), version: version}
	deadline := time.Now().Add(15 * time.Second)
	for {
		nc, err := nats.Connect(s.url, nats.Timeout(time.Second), nats.NoReconnect())
		if err == nil {
			if s.version == "" {
				s.version = "nats-server " + nc.ConnectedServerVersion()
			}
			nc.Close()
			return s, nil
		}
		if c.exited() {
			return nil, fmt.Errorf("nats-server exited at start:\n%s", c.logTail())
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			c.stop(5 * time.Second)
			return nil, fmt.Errorf("nats-server did not answer on %s: %v\n%s", s.url, err, c.logTail())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// natsClient is a connection with JetStream and the benchmark's stream.
type natsClient struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
}

func newNATSClient(ctx context.Context, url string, maxPending int) (*natsClient, error) {
	nc, err := nats.Connect(url, nats.Name("herald-bench"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending), jetstream.WithPublishAsyncTimeout(30*time.Second))
	if err != nil {
		nc.Close()
		return nil, err
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: natsStream, Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage, Replicas: 1,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("create stream: %w", err)
	}
	return &natsClient{nc: nc, js: js, stream: st}, nil
}

func (c *natsClient) Close() { c.nc.Close() }

// msgCount is the number of messages the stream holds.
func (c *natsClient) msgCount(ctx context.Context) (uint64, error) {
	info, err := c.stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// publishAsync publishes msgs with at most window unacknowledged, and waits
// for every ack. It returns the elapsed time and each message's latency
// from send to ack.
func (c *natsClient) publishAsync(ctx context.Context, subject string, ids []string, msgs [][]byte, window int) (time.Duration, []time.Duration, error) {
	type inflight struct {
		f  jetstream.PubAckFuture
		t0 time.Time
	}
	q := make(chan inflight, window)
	slots := make(chan struct{}, window)
	lat := make([]time.Duration, 0, len(msgs))
	collected := make(chan error, 1)
	go func() {
		var first error
		for it := range q {
			select {
			case ack := <-it.f.Ok():
				lat = append(lat, time.Since(it.t0))
				if ack.Duplicate && first == nil {
					first = fmt.Errorf("message %s acknowledged as a duplicate", it.f.Msg().Header.Get(jetstream.MsgIDHeader))
				}
			case err := <-it.f.Err():
				if first == nil {
					first = err
				}
			case <-ctx.Done():
				if first == nil {
					first = ctx.Err()
				}
			}
			<-slots
		}
		collected <- first
	}()
	start := time.Now()
	var sendErr error
	for i, m := range msgs {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			sendErr = ctx.Err()
		}
		if sendErr != nil {
			break
		}
		t0 := time.Now()
		f, err := c.js.PublishAsync(subject, m, jetstream.WithMsgID(ids[i]))
		if err != nil {
			<-slots
			sendErr = err
			break
		}
		q <- inflight{f, t0}
	}
	close(q)
	err := <-collected
	elapsed := time.Since(start)
	if err = errors.Join(sendErr, err); err != nil {
		return elapsed, nil, err
	}
	return elapsed, lat, nil
}

// publishSync publishes one message and waits for its ack.
func (c *natsClient) publishSync(ctx context.Context, subject, id string, msg []byte) error {
	ack, err := c.js.Publish(ctx, subject, msg, jetstream.WithMsgID(id))
	if err != nil {
		return err
	}
	if ack.Duplicate {
		return fmt.Errorf("message %s acknowledged as a duplicate", id)
	}
	return nil
}
