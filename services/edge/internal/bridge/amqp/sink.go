package amqp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Errors a Sink hands to done, wrapped with details. None is permanent:
// each can clear up (a binding added, the queue drained, the broker back).
var (
	// ErrUnroutable: the exchange routed the message to no queue. The sink
	// publishes with mandatory set, so the broker returns it instead of
	// dropping it, and the event is retried (then dead-lettered) like any
	// other failure: bind a queue to the exchange for the routing key.
	ErrUnroutable = errors.New("amqp: message returned unroutable")
	// ErrNacked: the broker refused the message (basic.nack), e.g. a queue
	// at its x-max-length with x-overflow reject-publish.
	ErrNacked = errors.New("amqp: broker nacked the message")
	// ErrConnection: the connection or channel ended before the broker
	// confirmed the message, or it could not be opened.
	ErrConnection = errors.New("amqp: connection lost")
	// ErrBlocked: the broker blocked publishers (a memory or disk alarm).
	ErrBlocked = errors.New("amqp: broker blocked publishing")
	// ErrClosed: Send after Close, or Close came before the confirm.
	ErrClosed = errors.New("amqp: sink closed")
)

// maxMessageSize is RabbitMQ's default max_message_size (128 MiB): a
// larger message closes the channel, taking every unconfirmed message with
// it, so it is refused for good before it is sent.
const maxMessageSize = 128 << 20

// Sink publishes events to an exchange over one connection and one channel
// in confirm mode.
//
// Send publishes every message before it returns (a TCP write each: it
// blocks only as long as the socket does) and reports each through done
// once the broker confirmed it: nil on basic.ack, ErrNacked on basic.nack,
// ErrUnroutable when the broker returned it (mandatory), ErrConnection
// when the connection died first. done is called from one goroutine of the
// sink, never from within Send (but after Close), so it may call Send.
//
// Messages keep their order on the channel, so messages of one key reach
// the queues in the order they were handed over. After a lost connection
// the next Send dials again, at most once per backoff step (100ms doubling
// to 10s, with jitter); until then Send fails its messages at once with
// ErrConnection. That dial happens within Send (refused at once when the
// broker is down, up to 5s when its host does not answer). Send may be
// called from any goroutine; calls are serialized. The sink does not bound
// what is in flight: the engine does (max_in_flight). Close must be called:
// it stops the sink's goroutines.
type Sink struct {
	url        string
	name       string
	exchange   string
	routingKey string
	structured bool

	mu      sync.Mutex // serializes Send and guards what follows
	gen     *generation
	closed  bool
	lastErr error
	retryAt time.Time
	backoff time.Duration

	loops sync.WaitGroup // every generation's goroutines
	note  *notifier
}

// NewSink builds a sink from cfg; it connects at the first Send.
func NewSink(cfg bridge.Config) (*Sink, error) {
	u, err := brokerURL(cfg)
	if err != nil {
		return nil, err
	}
	a := cfg.Bridge.GetAmqp()
	s := &Sink{
		url:        u,
		name:       cfg.Name,
		exchange:   a.GetExchange(),
		routingKey: a.GetRoutingKey(),
		structured: cfg.Bridge.GetSink().GetContentMode() == registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED,
		note:       newNotifier(),
	}
	if s.exchange == "" {
		s.exchange = defaultExchange
	}
	if s.routingKey == "" {
		s.routingKey = defaultRoutingKey
	}
	return s, nil
}

// generation is one connection and its confirm-mode channel.
type generation struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	blocked atomic.Bool
	lost    chan struct{} // closed once the channel ended and pending was failed

	mu      sync.Mutex
	dead    bool                // the confirm loop ended
	pending map[uint64]*pend    // by delivery tag
	byID    map[string][]uint64 // unconfirmed tags of each message id + routing key, in publish order
}

type pend struct {
	i        int
	done     func(int, error)
	id       string
	key      string
	returned *amqp.Return
}

// Send implements bridge.Sink.
func (s *Sink) Send(ctx context.Context, msgs []bridge.Message, done func(i int, err error)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		for i := range msgs {
			s.note.add(done, i, ErrClosed)
		}
		return
	}
	g, err := s.connectLocked()
	if err != nil {
		for i := range msgs {
			s.note.add(done, i, err)
		}
		return
	}
	for i := range msgs {
		pub, key, err := s.publishing(msgs[i].Event)
		if err != nil {
			s.note.add(done, i, bridge.Permanent(err))
			continue
		}
		if g.blocked.Load() {
			s.note.add(done, i, ErrBlocked)
			continue
		}
		// Only Send publishes on this channel, under s.mu: the next
		// sequence number is the delivery tag this publish gets.
		tag := g.ch.GetNextPublishSeqNo()
		if !g.add(tag, &pend{i: i, done: done, id: pub.MessageId, key: key}) {
			s.note.add(done, i, fmt.Errorf("%w: channel closed", ErrConnection))
			continue
		}
		if err := g.ch.PublishWithContext(ctx, s.exchange, key, true, false, pub); err != nil {
			if p := g.take(tag); p != nil {
				if ctx.Err() != nil {
					err = fmt.Errorf("amqp: publish: %w", ctx.Err())
				} else {
					err = fmt.Errorf("%w: publish: %v", ErrConnection, err)
				}
				s.note.add(done, i, err)
			}
		}
	}
}

// publishing renders ev as a message and its routing key.
func (s *Sink) publishing(e *eventv1.CloudEvent) (amqp.Publishing, string, error) {
	if e == nil {
		return amqp.Publishing{}, "", errors.New("amqp: no event")
	}
	pub := amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: e.GetId()}
	if s.structured {
		body, err := cloudevent.MarshalJSON(e)
		if err != nil {
			return pub, "", fmt.Errorf("amqp: render event %s: %w", e.GetId(), err)
		}
		pub.ContentType, pub.Body = cloudevent.StructuredContentType, body
	} else {
		b := cloudevent.ToBinary(e)
		pub.Headers = make(amqp.Table, len(b.Attributes))
		for k, v := range b.Attributes {
			pub.Headers[headerPrefix+k] = v
		}
		pub.ContentType, pub.Body = b.ContentType, b.Body
	}
	if len(pub.Body) > maxMessageSize {
		return pub, "", fmt.Errorf("amqp: event %s is %d bytes, over the broker's %d", e.GetId(), len(pub.Body), maxMessageSize)
	}
	return pub, strings.ReplaceAll(s.routingKey, "{type}", e.GetType()), nil
}

// connectLocked returns the live generation, dialing a new one when the
// last one died and its backoff passed.
func (s *Sink) connectLocked() (*generation, error) {
	if g := s.gen; g != nil {
		select {
		case <-g.lost:
			s.gen = nil
		default:
			return g, nil
		}
	}
	now := time.Now()
	if now.Before(s.retryAt) {
		return nil, fmt.Errorf("%w: %v (next attempt in %v)", ErrConnection, s.lastErr, s.retryAt.Sub(now).Round(time.Millisecond))
	}
	g, err := s.open()
	if err != nil {
		s.lastErr = err
		if s.backoff == 0 {
			s.backoff = 100 * time.Millisecond
		} else if s.backoff *= 2; s.backoff > 10*time.Second {
			s.backoff = 10 * time.Second
		}
		s.retryAt = now.Add(s.backoff/2 + rand.N(s.backoff/2+1))
		return nil, fmt.Errorf("%w: %v", ErrConnection, err)
	}
	s.backoff, s.lastErr = 0, nil
	s.gen = g
	return g, nil
}

func (s *Sink) open() (*generation, error) {
	conn, err := dial(s.url, s.name, "sink")
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("amqp: open confirm channel: %w", err)
	}
	g := &generation{
		conn:    conn,
		ch:      ch,
		lost:    make(chan struct{}),
		pending: map[uint64]*pend{},
		byID:    map[string][]uint64{},
	}
	// Unbuffered on purpose: the connection's reader hands over a
	// basic.return before it reads the basic.ack of the same message, and
	// one goroutine takes both in that order. The loop never blocks (done
	// runs on the notifier), so the reader is never held up.
	returns := ch.NotifyReturn(make(chan amqp.Return))
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	blocks := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	s.loops.Add(2)
	go func() {
		defer s.loops.Done()
		for b := range blocks {
			g.blocked.Store(b.Active)
		}
	}()
	go func() {
		defer s.loops.Done()
		s.confirmLoop(g, returns, confirms, closes)
	}()
	return g, nil
}

// confirmLoop settles g's messages as the broker confirms or returns them,
// then, once the channel ended, fails what is left and closes the
// connection.
func (s *Sink) confirmLoop(g *generation, returns <-chan amqp.Return, confirms <-chan amqp.Confirmation, closes <-chan *amqp.Error) {
	for confirms != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			g.markReturned(&r)
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			p := g.take(c.DeliveryTag)
			if p == nil {
				continue
			}
			var err error
			switch {
			case !c.Ack:
				err = fmt.Errorf("%w (exchange %q, routing key %q)", ErrNacked, s.exchange, p.key)
			case p.returned != nil:
				err = fmt.Errorf("%w: %d %s (exchange %q, routing key %q)", ErrUnroutable, p.returned.ReplyCode, p.returned.ReplyText, s.exchange, p.key)
			}
			s.note.add(p.done, p.i, err)
		}
	}
	why := "channel closed"
	select {
	case e := <-closes:
		if e != nil {
			why = e.Error()
		}
	default:
	}
	g.mu.Lock()
	left := g.pending
	g.pending, g.byID = map[uint64]*pend{}, map[string][]uint64{}
	g.dead = true
	close(g.lost)
	g.mu.Unlock()
	for _, tag := range sortedTags(left) {
		p := left[tag]
		s.note.add(p.done, p.i, fmt.Errorf("%w before the broker confirmed: %s", ErrConnection, why))
	}
	closeConn(g.conn)
}

func sortedTags(m map[uint64]*pend) []uint64 {
	return slices.Sorted(maps.Keys(m))
}

// add registers p under tag before it is published; false when the
// channel already ended (its confirm loop would never settle p).
func (g *generation) add(tag uint64, p *pend) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dead {
		return false
	}
	g.pending[tag] = p
	k := p.id + "\x00" + p.key
	g.byID[k] = append(g.byID[k], tag)
	return true
}

// take removes and returns the message of tag, nil when already settled.
func (g *generation) take(tag uint64) *pend {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.pending[tag]
	if p == nil {
		return nil
	}
	delete(g.pending, tag)
	k := p.id + "\x00" + p.key
	tags := g.byID[k]
	for k, t := range tags {
		if t == tag {
			tags = append(tags[:k], tags[k+1:]...)
			break
		}
	}
	if len(tags) == 0 {
		delete(g.byID, k)
	} else {
		g.byID[k] = tags
	}
	return p
}

// markReturned pins a basic.return on its message. A return carries no
// delivery tag, only the message; it comes before the message's confirm,
// and returns come in publish order, so it belongs to the oldest
// unconfirmed, not yet returned message with its id and routing key. (The
// one case this gets wrong: the same event twice in flight with the same
// key, the first routed and the second not because a binding went away in
// between; the first then fails and is sent again, the second is taken as
// delivered.)
func (g *generation) markReturned(r *amqp.Return) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, tag := range g.byID[r.MessageId+"\x00"+r.RoutingKey] {
		if p := g.pending[tag]; p != nil && p.returned == nil {
			p.returned = r
			return
		}
	}
}

func (g *generation) unconfirmed() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.pending)
}

// Close implements bridge.Sink: it waits (within ctx) for the broker to
// confirm what was sent, then closes the connection; what is still
// unconfirmed gets ErrConnection. Every done has been called when Close
// returns.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	g := s.gen
	s.gen = nil
	s.mu.Unlock()
	var err error
	if g != nil {
		t := time.NewTicker(5 * time.Millisecond)
	wait:
		for g.unconfirmed() > 0 {
			select {
			case <-ctx.Done():
				err = ctx.Err()
				break wait
			case <-g.lost:
				break wait
			case <-t.C:
			}
		}
		t.Stop()
		closeConn(g.conn)
	}
	s.loops.Wait()
	s.note.close()
	return err
}

// notifier calls done callbacks, in the order they were queued, from one
// goroutine: the confirm loop must never wait for the engine, or the
// connection's reader would wait for it too (and drop notifications after
// 5s).
type notifier struct {
	mu       sync.Mutex
	stopped  bool
	q        []completion
	wake     chan struct{}
	quit     chan struct{}
	finished chan struct{}
}

type completion struct {
	done func(int, error)
	i    int
	err  error
}

func newNotifier() *notifier {
	n := &notifier{wake: make(chan struct{}, 1), quit: make(chan struct{}), finished: make(chan struct{})}
	go n.run()
	return n
}

func (n *notifier) add(done func(int, error), i int, err error) {
	n.mu.Lock()
	if n.stopped {
		// After Close: nothing is in flight any more, call it here.
		n.mu.Unlock()
		done(i, err)
		return
	}
	n.q = append(n.q, completion{done, i, err})
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) run() {
	defer close(n.finished)
	var batch []completion
	for {
		n.mu.Lock()
		batch, n.q = n.q, batch[:0]
		n.mu.Unlock()
		for k, c := range batch {
			c.done(c.i, c.err)
			batch[k] = completion{}
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-n.wake:
		case <-n.quit:
			n.mu.Lock()
			left := n.q
			n.q, n.stopped = nil, true
			n.mu.Unlock()
			for _, c := range left {
				c.done(c.i, c.err)
			}
			return
		}
	}
}

// close runs what is queued and stops the goroutine.
func (n *notifier) close() {
	close(n.quit)
	<-n.finished
}
