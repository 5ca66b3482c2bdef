package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	pahov3 "github.com/eclipse/paho.mqtt.golang"
)

// conn is one MQTT connection, over MQTT 5 or 3.1.1. A sink or a source
// makes a new one for each (re)connect: no client state outlives its
// network connection, the broker's session is what carries over.
type conn interface {
	// publish sends m at qos and returns once the broker confirmed it
	// (PUBACK, PUBCOMP), or why not; Permanent when sending it again
	// cannot help.
	publish(ctx context.Context, m *outgoing, qos byte) error
	// subscribe subscribes to filter at qos.
	subscribe(ctx context.Context, filter string, qos byte) error
	// done is closed once the connection is lost or closed.
	done() <-chan struct{}
	// err is why the connection ended (after done).
	err() error
	// close ends the connection with a DISCONNECT and waits for the
	// client's goroutines.
	close()
}

// connOpts is what differs between a sink's and a source's connection.
type connOpts struct {
	clientID string
	// persistent asks for a session that outlives the connection (clean
	// start / clean session false).
	persistent bool
	// receiveMax bounds the QoS 1 and 2 messages the broker sends before
	// they are acknowledged (MQTT 5 Receive Maximum).
	receiveMax uint16
	// onMessage, when set, receives every PUBLISH from the broker, in
	// order, on the client's goroutine; the message is acknowledged only
	// when its ack is called (manual acknowledgement).
	onMessage func(*incoming)
}

// connect dials the broker and completes CONNECT / CONNACK within ctx.
// sessionPresent is the broker's word that it had a session of this
// client id.
func connect(ctx context.Context, st *settings, o connOpts) (c conn, sessionPresent bool, err error) {
	if st.version == 4 {
		return connect3(ctx, st, o)
	}
	return connect5(ctx, st, o)
}

// lost records the first reason a connection ended; its ctx ends then.
type lost struct {
	once   sync.Once
	ctx    context.Context
	cancel context.CancelFunc
	why    error
}

func newLost() *lost {
	l := &lost{}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

func (l *lost) set(err error) {
	l.once.Do(func() {
		if err == nil {
			err = errors.New("connection closed")
		}
		l.why = err
		l.cancel()
	})
}

func (l *lost) done() <-chan struct{} { return l.ctx.Done() }

func (l *lost) err() error {
	if l.ctx.Err() == nil {
		return nil
	}
	return l.why
}

// --- MQTT 5: github.com/eclipse/paho.golang ---

type conn5 struct {
	*lost
	c         *paho.Client
	maxPacket uint32 // the broker's Maximum Packet Size; 0: none
	closeOnce sync.Once
}

func dialNet(ctx context.Context, st *settings) (net.Conn, error) {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: keepAlive}
	if !st.tls {
		return d.DialContext(ctx, "tcp", st.broker)
	}
	host, _, _ := net.SplitHostPort(st.broker)
	td := &tls.Dialer{NetDialer: d, Config: &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}}
	return td.DialContext(ctx, "tcp", st.broker)
}

func connect5(ctx context.Context, st *settings, o connOpts) (conn, bool, error) {
	nc, err := dialNet(ctx, st)
	if err != nil {
		return nil, false, fmt.Errorf("mqtt: dial %s: %w", st.broker, err)
	}
	if st.tls {
		// tls.Conn is not safe for concurrent writes, which paho makes.
		nc = packets.NewThreadSafeConn(nc)
	}
	c := &conn5{lost: newLost()}
	cc := paho.ClientConfig{
		ClientID:      o.clientID,
		Conn:          nc,
		PacketTimeout: publishTimeout,
		OnClientError: func(err error) { c.set(fmt.Errorf("mqtt: connection to %s lost: %w", st.broker, err)) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			reason := ""
			if d.Properties != nil {
				reason = d.Properties.ReasonString
			}
			c.set(fmt.Errorf("mqtt: broker %s disconnected (reason code 0x%02x %s)", st.broker, d.ReasonCode, reason))
		},
	}
	if o.onMessage != nil {
		cc.EnableManualAcknowledgment = true
		cc.SendAcksInterval = 10 * time.Millisecond
		cc.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			in := &incoming{topic: p.Topic, payload: p.Payload, packetID: p.PacketID, qos: p.QoS}
			if p.Properties != nil {
				in.contentType = p.Properties.ContentType
				in.user = p.Properties.User
			}
			cl := pr.Client
			in.ack = func() { _ = cl.Ack(p) }
			o.onMessage(in)
			return true, nil
		}}
	}
	cl := paho.NewClient(cc)
	cp := &paho.Connect{
		ClientID:     o.clientID,
		KeepAlive:    uint16(keepAlive / time.Second),
		CleanStart:   !o.persistent,
		Username:     st.username,
		UsernameFlag: st.username != "",
		Password:     []byte(st.password),
		PasswordFlag: st.password != "",
		Properties:   &paho.ConnectProperties{},
	}
	if o.persistent {
		exp := uint32(sessionExpiry / time.Second)
		cp.Properties.SessionExpiryInterval = &exp
	}
	if o.receiveMax > 0 {
		rm := o.receiveMax
		cp.Properties.ReceiveMaximum = &rm
	}
	ca, err := cl.Connect(ctx, cp)
	if err != nil {
		// Connect closed nc.
		if ca != nil {
			return nil, false, fmt.Errorf("mqtt: connect to %s: %w (reason code 0x%02x)", st.broker, err, ca.ReasonCode)
		}
		return nil, false, fmt.Errorf("mqtt: connect to %s: %w", st.broker, err)
	}
	c.c = cl
	if ca.Properties != nil {
		if ca.Properties.MaximumPacketSize != nil {
			c.maxPacket = *ca.Properties.MaximumPacketSize
		}
		if mq := ca.Properties.MaximumQoS; mq != nil && *mq < st.qos {
			c.close()
			return nil, false, fmt.Errorf("mqtt: broker %s takes QoS %d at most, the bridge asks for %d", st.broker, *mq, st.qos)
		}
	}
	go func() {
		<-cl.Done()
		c.set(fmt.Errorf("mqtt: connection to %s closed", st.broker))
	}()
	return c, ca.SessionPresent, nil
}

func (c *conn5) publish(ctx context.Context, m *outgoing, qos byte) error {
	p := &paho.Publish{QoS: qos, Topic: m.topic, Payload: m.payload}
	if m.contentType != "" || len(m.user) > 0 {
		p.Properties = &paho.PublishProperties{ContentType: m.contentType, User: m.user}
	}
	if c.maxPacket > 0 && uint64(size5(m)) > uint64(c.maxPacket) {
		return bridge.Permanent(fmt.Errorf("mqtt: message of %d bytes is over the broker's maximum packet size %d", size5(m), c.maxPacket))
	}
	// paho forgets, rather than fails, what is in flight when the
	// connection drops (its session state is cleaned): without this the
	// Publish would wait for its PacketTimeout.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.ctx, cancel)()
	pr, err := c.c.Publish(ctx, p)
	if pr != nil && pr.ReasonCode >= 0x80 {
		reason := ""
		if pr.Properties != nil {
			reason = pr.Properties.ReasonString
		}
		err := fmt.Errorf("mqtt: broker refused the message: reason code 0x%02x %s", pr.ReasonCode, reason)
		switch pr.ReasonCode {
		case 0x90, 0x95, 0x99: // topic name invalid, packet too large, payload format invalid
			return bridge.Permanent(err)
		}
		return err
	}
	if err != nil {
		if errors.Is(err, paho.ErrInvalidArguments) {
			return bridge.Permanent(fmt.Errorf("mqtt: publish: %w", err))
		}
		if cerr := c.lost.err(); cerr != nil {
			return fmt.Errorf("mqtt: publish not confirmed: %w (%v)", err, cerr)
		}
		return fmt.Errorf("mqtt: publish not confirmed: %w", err)
	}
	return nil
}

// size5 is about the size of m's PUBLISH packet.
func size5(m *outgoing) int {
	n := 16 + len(m.topic) + len(m.payload) + len(m.contentType)
	for _, u := range m.user {
		n += 5 + len(u.Key) + len(u.Value)
	}
	return n
}

func (c *conn5) subscribe(ctx context.Context, filter string, qos byte) error {
	sa, err := c.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{
		Topic: filter,
		QoS:   qos,
		// Retained messages only for a new subscription, not again on
		// every reconnect.
		RetainHandling: 1,
	}}})
	if err != nil {
		if sa != nil && len(sa.Reasons) > 0 {
			return fmt.Errorf("mqtt: subscribe to %q: %w (reason code 0x%02x)", filter, err, sa.Reasons[0])
		}
		return fmt.Errorf("mqtt: subscribe to %q: %w", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80 {
		return fmt.Errorf("mqtt: broker refused the subscription to %q: %v", filter, sa.Reasons)
	}
	return nil
}

func (c *conn5) close() {
	c.closeOnce.Do(func() {
		c.set(errors.New("mqtt: connection closed"))
		_ = c.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		<-c.c.Done()
	})
}

// --- MQTT 3.1.1: github.com/eclipse/paho.mqtt.golang ---

type conn3 struct {
	*lost
	c         pahov3.Client
	closeOnce sync.Once
}

func connect3(ctx context.Context, st *settings, o connOpts) (conn, bool, error) {
	c := &conn3{lost: newLost()}
	scheme := "tcp://"
	if st.tls {
		scheme = "ssl://"
	}
	opts := pahov3.NewClientOptions().
		AddBroker(scheme + st.broker).
		SetClientID(o.clientID).
		SetProtocolVersion(4).
		SetCleanSession(!o.persistent).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(keepAlive).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(dialTimeout).
		// How long Publish may wait to hand its packet to the client's
		// writer. A connection found lost in the middle of a Publish
		// leaves it waiting that long, so keep it short: a healthy
		// writer takes a packet at once (a lane has one in flight).
		SetWriteTimeout(2 * time.Second).
		SetOrderMatters(true).
		SetConnectionLostHandler(func(_ pahov3.Client, err error) {
			c.set(fmt.Errorf("mqtt: connection to %s lost: %w", st.broker, err))
		})
	if st.username != "" {
		opts.SetUsername(st.username)
	}
	if st.password != "" {
		opts.SetPassword(st.password)
	}
	if st.tls {
		host, _, _ := net.SplitHostPort(st.broker)
		opts.SetTLSConfig(&tls.Config{ServerName: host, MinVersion: tls.VersionTLS12})
	}
	if o.onMessage != nil {
		opts.SetAutoAckDisabled(true)
		opts.SetDefaultPublishHandler(func(_ pahov3.Client, m pahov3.Message) {
			o.onMessage(&incoming{topic: m.Topic(), payload: m.Payload(), packetID: m.MessageID(), qos: m.Qos(), ack: m.Ack})
		})
	}
	cl := pahov3.NewClient(opts)
	tok := cl.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// The attempt ends by itself within ConnectTimeout; leave it.
		go func() { <-tok.Done(); cl.Disconnect(0) }()
		return nil, false, fmt.Errorf("mqtt: connect to %s: %w", st.broker, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return nil, false, fmt.Errorf("mqtt: connect to %s: %w", st.broker, err)
	}
	c.c = cl
	return c, tok.(*pahov3.ConnectToken).SessionPresent(), nil
}

func (c *conn3) publish(ctx context.Context, m *outgoing, qos byte) error {
	if len(m.payload) > math.MaxInt32/2 {
		return bridge.Permanent(fmt.Errorf("mqtt: message of %d bytes is too large for MQTT", len(m.payload)))
	}
	tok := c.c.Publish(m.topic, qos, false, m.payload)
	t := time.NewTimer(publishTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("mqtt: publish not confirmed: %w", ctx.Err())
	case <-t.C:
		return fmt.Errorf("mqtt: publish not confirmed within %v", publishTimeout)
	}
	if err := tok.Error(); err != nil {
		if cerr := c.lost.err(); cerr != nil {
			return fmt.Errorf("mqtt: publish not confirmed: %w (%v)", err, cerr)
		}
		return fmt.Errorf("mqtt: publish not confirmed: %w", err)
	}
	return nil
}

func (c *conn3) subscribe(ctx context.Context, filter string, qos byte) error {
	tok := c.c.Subscribe(filter, qos, nil)
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("mqtt: subscribe to %q: %w", filter, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("mqtt: subscribe to %q: %w", filter, err)
	}
	st := tok.(*pahov3.SubscribeToken)
	if q, ok := st.Result()[filter]; !ok || q > 2 {
		return fmt.Errorf("mqtt: broker refused the subscription to %q", filter)
	}
	return nil
}

func (c *conn3) close() {
	c.closeOnce.Do(func() {
		c.set(errors.New("mqtt: connection closed"))
		c.c.Disconnect(100)
	})
}
