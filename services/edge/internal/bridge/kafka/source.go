package kafka

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

// Source consumes the bridge's topic in its consumer group (KafkaBridge.group,
// default herald-<bridge name>), from the oldest record when the group has
// no offset yet, reading committed records only (read_committed). Offsets
// are committed by hand, after publish returned nil for the records: never
// before, so a crash re-reads what was not published, with the same ids.
//
// One Run at a time; Lag and Close may be called from any goroutine.
type Source struct {
	cfg   bridge.Config
	topic string
	group string
	opts  []kgo.Opt // the consumer's
	o     options

	admCl *kgo.Client // for Lag, apart from the consumer so Lag works when Run does not
	adm   *kadm.Client

	stop    context.CancelFunc // ends Run's ctx, for Close
	stopCtx context.Context
	mu      sync.Mutex // closed; running.Add
	closed  bool
	running sync.WaitGroup
}

var _ bridge.Source = (*Source)(nil)

func newSource(cfg bridge.Config, o options) (*Source, error) {
	base, err := clientOpts(cfg, o)
	if err != nil {
		return nil, err
	}
	if cfg.Bridge.GetSource().GetEventType() == "" {
		return nil, fmt.Errorf("kafka bridge %q: a source needs an event type", cfg.Name)
	}
	k := cfg.Bridge.GetKafka()
	group := k.GetGroup()
	if group == "" {
		group = "herald-" + cfg.Name
	}
	admCl, err := kgo.NewClient(base...)
	if err != nil {
		return nil, fmt.Errorf("kafka bridge %q: %w", cfg.Name, err)
	}
	s := &Source{
		cfg:   cfg,
		topic: k.GetTopic(),
		group: group,
		opts: append(base[:len(base):len(base)],
			kgo.ConsumerGroup(group),
			kgo.ConsumeTopics(k.GetTopic()),
			kgo.DisableAutoCommit(),
			// No revoke between a poll and its commit: the records
			// published are still ours to commit (or to rewind).
			kgo.BlockRebalanceOnPoll(),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.FetchMaxWait(500*time.Millisecond),
			// The group gives a dead edge's partitions to the edge that took
			// the bridge over once its session ends: franz-go's default, 45
			// s, would stall a source that long after an edge crash, while
			// Herald's bridge lease (HERALD_EDGE_BRIDGE_LEASE) is 10 s by
			// default. 10 s is above brokers' group.min.session.timeout.ms
			// (6 s by default).
			kgo.SessionTimeout(sessionTimeout),
			kgo.HeartbeatInterval(sessionTimeout/4),
		),
		o:     o,
		admCl: admCl,
		adm:   kadm.NewClient(admCl),
	}
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// sessionTimeout is the source's consumer group session timeout: how long
// a dead member keeps its partitions.
const sessionTimeout = 10 * time.Second

// commitTimeout bounds a commit after a successful publish.
const commitTimeout = 10 * time.Second

// Run consumes until ctx ends (it returns nil then) or Close is called, or
// the brokers refuse the bridge for good (authentication, authorization).
// Each poll of at most batch records goes to publish; its offsets are
// committed once publish returned nil. When publish fails, nothing is
// committed: the partitions are rewound to the batch's first records and
// the same records come again after a backoff (500ms doubling to 10s).
// Unreachable brokers are retried by franz-go, without end.
func (s *Source) Run(ctx context.Context, batch int, publish bridge.PublishFunc) error {
	if batch <= 0 {
		batch = int(s.cfg.Bridge.GetSource().GetBatchSize())
		if batch <= 0 {
			batch = 100
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errClosed
	}
	s.running.Add(1)
	s.mu.Unlock()
	defer s.running.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.stopCtx, cancel)
	defer stop()

	cl, err := kgo.NewClient(s.opts...)
	if err != nil {
		return fmt.Errorf("kafka bridge %q: %w", s.cfg.Name, err)
	}
	defer cl.Close() // leaves the group; commits nothing (autocommit is off)

	minB, maxB := s.o.minBackoff, s.o.maxBackoff
	if minB <= 0 {
		minB = 500 * time.Millisecond
	}
	if maxB <= 0 {
		maxB = 10 * time.Second
	}
	backoff := minB
	for {
		fetches := cl.PollRecords(ctx, batch)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			cl.AllowRebalance()
			return nil
		}
		var fatal error
		fetches.EachError(func(topic string, p int32, err error) {
			if fatal == nil && isFatal(err) {
				fatal = fmt.Errorf("kafka bridge %q: consume %s/%d: %w", s.cfg.Name, topic, p, err)
			}
		})
		if fatal != nil {
			cl.AllowRebalance()
			return fatal
		}
		records := fetches.Records()
		if len(records) == 0 {
			cl.AllowRebalance()
			continue
		}
		recs := make([]bridge.Record, len(records))
		for i, r := range records {
			recs[i] = s.convert(r)
		}
		if err := publish(ctx, recs); err != nil {
			if ctx.Err() != nil {
				cl.AllowRebalance()
				return nil
			}
			cl.SetOffsets(rewind(records))
			cl.AllowRebalance()
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
			backoff = min(2*backoff, maxB)
			continue
		}
		backoff = minB
		// Published: commit even if ctx ended meanwhile, or a restart
		// hands the batch again. A failed commit loses nothing either:
		// the records come again, and the router's dedupe drops them.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		_ = cl.CommitRecords(cctx, records...)
		ccancel()
		cl.AllowRebalance()
	}
}

// rewind is where each partition of records starts: the offsets that put
// them back in front of the consumer.
func rewind(records []*kgo.Record) map[string]map[int32]kgo.EpochOffset {
	to := map[string]map[int32]kgo.EpochOffset{}
	for _, r := range records {
		ps := to[r.Topic]
		if ps == nil {
			ps = map[int32]kgo.EpochOffset{}
			to[r.Topic] = ps
		}
		if at, ok := ps[r.Partition]; !ok || r.Offset < at.Offset {
			ps[r.Partition] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset}
		}
	}
	return to
}

// isFatal is what consuming cannot get past by retrying: the brokers
// refuse the bridge's credentials or rights.
func isFatal(err error) bool {
	return errors.Is(err, kerr.SaslAuthenticationFailed) ||
		errors.Is(err, kerr.TopicAuthorizationFailed) ||
		errors.Is(err, kerr.GroupAuthorizationFailed) ||
		errors.Is(err, kerr.ClusterAuthorizationFailed) ||
		errors.Is(err, kerr.InvalidTopicException) ||
		errors.Is(err, kerr.InvalidGroupID)
}

// convert reads r per the Kafka binding: structured when its content-type
// is a CloudEvents format, binary when it has a ce_specversion header,
// else a new event of the bridge's event type with r's value as its data
// (id <topic>-<partition>-<offset>, source kafka://<topic>, time the
// record's timestamp, the record's key as its partitionkey when it is
// UTF-8).
func (s *Source) convert(r *kgo.Record) bridge.Record {
	rec := bridge.Record{Raw: r.Value, Position: fmt.Sprintf("%s/%d@%d", r.Topic, r.Partition, r.Offset)}
	var (
		ct       string
		haveCT   bool
		attrs    map[string]string
		badValue string
	)
	for _, h := range r.Headers {
		name := strings.ToLower(h.Key)
		switch {
		case name == headerContentType:
			if !haveCT {
				ct, haveCT = string(h.Value), true
			}
		case strings.HasPrefix(name, headerPrefix) && len(name) > len(headerPrefix):
			if attrs == nil {
				attrs = map[string]string{}
			}
			a := name[len(headerPrefix):]
			if _, dup := attrs[a]; dup {
				continue
			}
			if !utf8.Valid(h.Value) && badValue == "" {
				badValue = h.Key
			}
			attrs[a] = string(h.Value)
		}
	}
	var (
		ev  *eventv1.CloudEvent
		err error
	)
	switch _, binary := attrs["specversion"]; {
	case strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "application/cloudevents"):
		ev, err = cloudevent.UnmarshalJSON(r.Value)
		if err != nil {
			err = fmt.Errorf("structured CloudEvent at %s: %w", rec.Position, err)
		}
	case binary:
		if badValue != "" {
			err = fmt.Errorf("binary CloudEvent at %s: header %q is not UTF-8", rec.Position, badValue)
			break
		}
		ev, err = cloudevent.FromBinary(cloudevent.Binary{Attributes: attrs, ContentType: ct, Body: r.Value})
		if err != nil {
			err = fmt.Errorf("binary CloudEvent at %s: %w", rec.Position, err)
		}
	default:
		id := fmt.Sprintf("%s-%d-%d", r.Topic, r.Partition, r.Offset)
		if len(id) > 256 { // a topic name near Kafka's 249 characters: still one id per record
			sum := sha256.Sum256([]byte(r.Topic))
			id = fmt.Sprintf("%x-%d-%d", sum[:16], r.Partition, r.Offset)
		}
		ev = bridge.NewEvent(s.cfg, id, "kafka://"+r.Topic, ct, r.Value, r.Timestamp)
		if len(r.Key) > 0 && utf8.Valid(r.Key) {
			if ev.Attributes == nil {
				ev.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{}
			}
			ev.Attributes["partitionkey"] = &eventv1.CloudEvent_CloudEventAttributeValue{
				Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: string(r.Key)},
			}
		}
	}
	if err != nil {
		rec.Err = err
		return rec
	}
	rec.Event = ev
	return rec
}

// Lag is the number of records between the group's committed offsets and
// the topic's high watermarks, summed over the partitions (a partition
// with no commit counts from its oldest record, where Run starts).
func (s *Source) Lag(ctx context.Context) (int64, error) {
	ends, err := s.adm.ListEndOffsets(ctx, s.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return -1, fmt.Errorf("kafka bridge %q: end offsets of %s: %w", s.cfg.Name, s.topic, err)
	}
	commits, err := s.adm.FetchOffsets(ctx, s.group)
	if err == nil {
		err = commits.Error()
	}
	if errors.Is(err, kerr.GroupIDNotFound) { // no commit yet (newer brokers say so)
		commits, err = nil, nil
	}
	if err != nil {
		return -1, fmt.Errorf("kafka bridge %q: offsets of group %s: %w", s.cfg.Name, s.group, err)
	}
	var starts kadm.ListedOffsets
	var lag int64
	var lerr error
	ends.Each(func(end kadm.ListedOffset) {
		if lerr != nil {
			return
		}
		from := int64(-1)
		if c, ok := commits.Lookup(end.Topic, end.Partition); ok && c.At >= 0 {
			from = c.At
		} else {
			if starts == nil {
				starts, lerr = s.adm.ListStartOffsets(ctx, s.topic)
				if lerr == nil {
					lerr = starts.Error()
				}
				if lerr != nil {
					return
				}
			}
			if st, ok := starts.Lookup(end.Topic, end.Partition); ok {
				from = st.Offset
			}
		}
		if from >= 0 && end.Offset > from {
			lag += end.Offset - from
		}
	})
	if lerr != nil {
		return -1, fmt.Errorf("kafka bridge %q: start offsets of %s: %w", s.cfg.Name, s.topic, lerr)
	}
	return lag, nil
}

// Close ends Run (and waits for it) and the Lag client.
func (s *Source) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stop()
	s.running.Wait()
	s.admCl.Close()
	return nil
}
