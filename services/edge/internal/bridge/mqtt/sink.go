package mqtt

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Sink tuning.
const (
	// maxLanes is how many messages a sink has waiting for their PUBACK at
	// once (fewer when max_in_flight is lower). See Sink.
	maxLanes = 64
	// connectWait is how long a message waits for a connection before it
	// fails (the sink is reconnecting): a broker back within it loses no
	// attempt.
	connectWait = 5 * time.Second
)

// Sink publishes events to an MQTT broker. It keeps one connection (clean
// start / clean session: nothing of it outlives a disconnect), reconnecting
// with exponential backoff for as long as it is open.
//
// Order: an MQTT client cannot learn about one message's PUBACK while a
// later one is on the wire unless it publishes them in turn from one
// goroutine, so the sink runs lanes: a message goes to the lane of its Key
// (a hash), and a lane publishes its messages one at a time, each after
// the previous one was confirmed. Messages of one Key thus reach the broker
// in the order Send got them; up to min(64, max_in_flight) messages of
// different lanes are in flight at once. When a message fails for a reason
// that is not permanent, the messages queued behind it in its lane fail
// too, so a retry of the first cannot be overtaken by its successors.
//
// Send and Close may be called from any goroutine. done is called from
// the lanes' goroutines, or from Send's before it returns when a message
// cannot be queued (the sink is closed, ctx ended); done must not block
// for long (it holds up its lane) and must not call Close.
type Sink struct {
	st    settings
	lanes []chan item
	seed  maphash.Seed

	ctx    context.Context // ends at Close: stops the lanes and the connection
	cancel context.CancelFunc
	wg     sync.WaitGroup // the lanes and maintain

	// mu guards closed; Send holds it shared while it queues, so that
	// nothing is queued once Close has it.
	mu      sync.RWMutex
	closed  bool
	closing chan struct{} // closed when Close begins: Send stops waiting
	pending sync.WaitGroup
	once    sync.Once

	cmu     sync.Mutex
	cur     conn          // nil while disconnected
	up      chan struct{} // closed when cur is set, renewed when it is cleared
	lastErr error         // why the last connect failed or the connection ended
}

var _ bridge.Sink = (*Sink)(nil)

type item struct {
	m    bridge.Message
	i    int
	done func(int, error)
}

// NewSink builds the sink of an MQTT bridge and starts connecting in the
// background. Messages sent before the first connection is up wait for it
// (5 s at most).
func NewSink(cfg bridge.Config) (*Sink, error) {
	st, err := parse(cfg, registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK)
	if err != nil {
		return nil, err
	}
	n := min(maxLanes, st.maxInFlight)
	s := &Sink{
		st:      st,
		lanes:   make([]chan item, n),
		seed:    maphash.MakeSeed(),
		closing: make(chan struct{}),
		up:      make(chan struct{}),
		lastErr: fmt.Errorf("mqtt: connecting to %s", st.broker),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// A lane holds its share of max_in_flight, with room for an uneven
	// spread of keys; past that Send waits.
	depth := max(16, 4*st.maxInFlight/n)
	for i := range s.lanes {
		s.lanes[i] = make(chan item, depth)
		s.wg.Add(1)
		go s.lane(s.lanes[i])
	}
	s.wg.Add(1)
	go s.maintain()
	return s, nil
}

// Send queues msgs on their lanes; done(i, err) follows for each once the
// broker confirmed it (err nil) or it failed. Send blocks only while a
// lane is full (until ctx ends).
func (s *Sink) Send(ctx context.Context, msgs []bridge.Message, done func(i int, err error)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i := range msgs {
		// Once one message is refused, so are all after it, so that none
		// overtakes an earlier one of its key.
		if s.closed || isClosed(s.closing) {
			done(i, errClosed)
			continue
		}
		if err := ctx.Err(); err != nil {
			done(i, fmt.Errorf("mqtt: not queued: %w", err))
			continue
		}
		it := item{m: msgs[i], i: i, done: done}
		lane := s.lanes[0]
		if len(s.lanes) > 1 {
			lane = s.lanes[maphash.String(s.seed, msgs[i].Key)%uint64(len(s.lanes))]
		}
		s.pending.Add(1)
		select {
		case lane <- it:
		case <-ctx.Done():
			s.finish(it, fmt.Errorf("mqtt: not queued: %w", ctx.Err()))
		case <-s.closing:
			s.finish(it, errClosed)
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (s *Sink) finish(it item, err error) {
	it.done(it.i, err)
	s.pending.Done()
}

// lane publishes the messages of its channel one after another.
func (s *Sink) lane(ch chan item) {
	defer s.wg.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case it := <-ch:
			err := s.deliver(&it.m)
			s.finish(it, err)
			if err != nil && !bridge.IsPermanent(err) {
				for n := len(ch); n > 0; n-- {
					s.finish(<-ch, fmt.Errorf("mqtt: not sent, a message before it on its lane failed: %w", err))
				}
			}
		}
	}
}

func (s *Sink) deliver(m *bridge.Message) error {
	out, err := render(&s.st, m.Event)
	if err != nil {
		return err
	}
	c, err := s.conn()
	if err != nil {
		return err
	}
	return c.publish(s.ctx, &out, s.st.qos)
}

// conn returns the connection, waiting connectWait for one.
func (s *Sink) conn() (conn, error) {
	for deadline := time.Now().Add(connectWait); ; {
		s.cmu.Lock()
		c, up, why := s.cur, s.up, s.lastErr
		s.cmu.Unlock()
		if c != nil {
			return c, nil
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, fmt.Errorf("mqtt: not connected: %w", why)
		}
		t := time.NewTimer(wait)
		select {
		case <-up:
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			return nil, errClosed
		}
		t.Stop()
	}
}

// maintain connects, waits for the connection to end, and reconnects
// with backoff, until Close.
func (s *Sink) maintain() {
	defer s.wg.Done()
	bo := backoff{max: maxBackoff}
	for {
		ctx, cancel := context.WithTimeout(s.ctx, dialTimeout)
		c, _, err := connect(ctx, &s.st, connOpts{clientID: s.st.clientID})
		cancel()
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.setConn(nil, err)
			if !sleep(s.ctx, bo.next()) {
				return
			}
			continue
		}
		began := time.Now()
		s.setConn(c, nil)
		select {
		case <-c.done():
			s.setConn(nil, c.err())
		case <-s.ctx.Done():
			s.setConn(nil, errClosed)
			c.close()
			return
		}
		c.close()
		if time.Since(began) > 5*time.Second {
			bo.reset()
		}
		if !sleep(s.ctx, bo.next()) {
			return
		}
	}
}

func (s *Sink) setConn(c conn, why error) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	switch {
	case c != nil && s.cur == nil:
		s.cur = c
		close(s.up)
	case c == nil && s.cur != nil:
		s.cur = nil
		s.up = make(chan struct{})
	}
	if why != nil {
		s.lastErr = why
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Close waits, within ctx, until every queued message was confirmed or
// failed, then disconnects; what is still unconfirmed when ctx ends fails
// with an error. Send after Close fails every message at once.
func (s *Sink) Close(ctx context.Context) error {
	var err error
	s.once.Do(func() {
		close(s.closing)
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()

		flushed := make(chan struct{})
		go func() { s.pending.Wait(); close(flushed) }()
		select {
		case <-flushed:
		case <-ctx.Done():
			err = fmt.Errorf("mqtt: close before every message was confirmed: %w", ctx.Err())
		}
		s.cancel() // the lanes' publishes end with an error, maintain disconnects
		s.wg.Wait()
		for _, ch := range s.lanes {
			for n := len(ch); n > 0; n-- {
				s.finish(<-ch, errClosed)
			}
		}
		<-flushed
	})
	return err
}
