// Package eventlog is the layout of Herald's durable log on Redis Streams,
// shared by the router (which appends) and the edge (which reads).
//
// Keys:
//
//	herald:log:{<type>}     one stream per event type (partition 0); the hash tag keeps
//	herald:log:{<type>#<p>} it on one Redis Cluster shard; partitions 1..n-1 of a type
//	                        with n partitions have their own. Entry fields:
//	                        ce   the CloudEvent, protobuf-encoded
//	                        app  the account that published it
//
// An event's cursor is its stream entry id ("<ms>-<seq>"). Entry ids come from
// the clock of the Redis server (on a Redis Cluster, the master of the
// stream's slot) and never go below the stream's last id, so one cursor
// orders events across every stream: ReadAfter merges streams in id order
// and never returns an id that a later write could still undercut, on one
// server or across the shards of a cluster (it reads every shard's clock,
// and holds an entry back until every stream's master clock has passed it;
// see docs/cluster.md). The router stamps ids that are unique across
// streams (see its appender); ids Redis generates itself ('*') are only
// unique per stream, and readers here tolerate such ties.
package eventlog

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Entry field names.
const (
	FieldEvent = "ce"
	FieldApp   = "app"
)

const streamPrefix = "herald:log:{"

// StreamKey is the stream holding events of one type.
func StreamKey(eventType string) string { return TagKey(eventType) }

// PartitionKey is the stream holding partition p of a type: partition 0 is
// StreamKey, partition p > 0 is herald:log:{<type>#<p>}, a hash tag of its
// own so that partitions spread over Redis Cluster shards.
func PartitionKey(eventType string, p int) string { return TagKey(Tag(eventType, p)) }

// Tag is the hash tag of partition p of a type: <type>, or <type>#<p> for
// p > 0. Keys that must live on a stream's shard carry it.
func Tag(eventType string, p int) string {
	if p <= 0 {
		return eventType
	}
	return eventType + "#" + strconv.Itoa(p)
}

// TagKey is the stream with hash tag tag.
func TagKey(tag string) string { return streamPrefix + tag + "}" }

// TagOfStream is the hash tag of a log stream key, and whether key is one.
func TagOfStream(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, streamPrefix)
	if !ok || !strings.HasSuffix(rest, "}") {
		return "", false
	}
	return strings.TrimSuffix(rest, "}"), true
}

// StreamKeys lists the streams of a type with n partitions (n < 1 means 1).
func StreamKeys(eventType string, n int32) []string {
	keys := []string{StreamKey(eventType)}
	for p := 1; p < int(n); p++ {
		keys = append(keys, PartitionKey(eventType, p))
	}
	return keys
}

// Partition picks the partition of a partition key among n: the same key
// always lands in the same partition, where its events stay in order.
func Partition(partitionKey string, n int32) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(partitionKey))
	return int(h.Sum32() % uint32(n))
}

// TypeOfStream is the inverse of StreamKey and PartitionKey.
func TypeOfStream(key string) string {
	t := strings.TrimSuffix(strings.TrimPrefix(key, streamPrefix), "}")
	if i := strings.LastIndexByte(t, '#'); i >= 0 {
		t = t[:i]
	}
	return t
}

// ID is a stream entry id, the cursor of an event.
type ID struct{ Ms, Seq uint64 }

// Zero is before every entry: reading after it replays the retained log.
var Zero ID

// ParseID parses "0", "<ms>" or "<ms>-<seq>".
func ParseID(s string) (ID, error) {
	ms, seq, found := strings.Cut(s, "-")
	var id ID
	var err error
	if id.Ms, err = strconv.ParseUint(ms, 10, 64); err != nil {
		return ID{}, fmt.Errorf("cursor %q is not a stream id like 1700000000000-0", s)
	}
	if found {
		if id.Seq, err = strconv.ParseUint(seq, 10, 64); err != nil {
			return ID{}, fmt.Errorf("cursor %q is not a stream id like 1700000000000-0", s)
		}
	}
	return id, nil
}

// MustParseID is ParseID for ids that come from Redis.
func MustParseID(s string) ID {
	id, err := ParseID(s)
	if err != nil {
		panic(err)
	}
	return id
}

func (id ID) String() string {
	return strconv.FormatUint(id.Ms, 10) + "-" + strconv.FormatUint(id.Seq, 10)
}

// Compare returns -1, 0 or +1.
func (id ID) Compare(o ID) int {
	if c := cmp.Compare(id.Ms, o.Ms); c != 0 {
		return c
	}
	return cmp.Compare(id.Seq, o.Seq)
}

// Less reports id < o.
func (id ID) Less(o ID) bool { return id.Compare(o) < 0 }

// Entry is one event read from the log.
type Entry struct {
	ID      ID
	Type    string
	Account string
	Event   *eventv1.CloudEvent
}

// Encode returns the stream entry fields of an event.
func Encode(ev *eventv1.CloudEvent, account string) ([]any, error) {
	b, err := proto.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return []any{FieldEvent, b, FieldApp, account}, nil
}

// Decode turns a stream message of the given stream into an Entry.
func Decode(stream string, m redis.XMessage) (Entry, error) {
	e := Entry{ID: MustParseID(m.ID), Type: TypeOfStream(stream)}
	raw, _ := m.Values[FieldEvent].(string)
	e.Account, _ = m.Values[FieldApp].(string)
	e.Event = new(eventv1.CloudEvent)
	if err := proto.Unmarshal([]byte(raw), e.Event); err != nil {
		return e, fmt.Errorf("decode %s %s: %w", stream, m.ID, err)
	}
	return e, nil
}

// streamNumberBits is how many low bits of a cursor's sequence number the
// stream number takes (ids are <ms>-<k * 2^24 + stream number>).
const streamNumberBits = 24

// StreamNumber is the number of the log stream an id was stamped for; 0,
// which no log stream has, marks a test event (see TestID).
func (id ID) StreamNumber() uint64 { return id.Seq & (1<<streamNumberBits - 1) }

// IsTest reports whether a cursor is a test event's: stream number 0.
func IsTest(cursor string) bool {
	id, err := ParseID(cursor)
	return err == nil && id.StreamNumber() == 0 && id.Ms > 0
}
