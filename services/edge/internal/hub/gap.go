package hub

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/redis/go-redis/v9"
)

// Gap says that events after a resume cursor are no longer in the log:
// retention trimmed them before the client came back.
type Gap struct {
	// From is the cursor the client resumed after.
	From eventlog.ID
	// To is the newest cursor that may have been trimmed: events in
	// (From, To] of Types are gone.
	To eventlog.ID
	// Resume is the oldest event still retained after To, where delivery
	// of those types resumes; Zero when none is left.
	Resume eventlog.ID
	// Types are the event types that lost events.
	Types []string
}

// FindGap reports what retention trimmed after cursor in streams, or nil.
//
// Redis records no trimmed ids, only how many entries a stream ever had
// and its oldest one: a cursor older than the oldest retained entry of a
// stream that lost entries gets a gap, even when the cursor was itself
// the newest trimmed entry and nothing after it was lost.
func FindGap(ctx context.Context, rdb redis.Cmdable, streams []string, cursor eventlog.ID) (*Gap, error) {
	if len(streams) == 0 {
		return nil, nil
	}
	pipe := rdb.Pipeline()
	infos := make([]*redis.XInfoStreamCmd, len(streams))
	for i, s := range streams {
		infos[i] = pipe.XInfoStream(ctx, s)
	}
	_, _ = pipe.Exec(ctx) // errors per command below
	var g *Gap
	for i, cmd := range infos {
		info, err := cmd.Result()
		if err != nil {
			if strings.Contains(err.Error(), "no such key") {
				continue // never written: nothing lost
			}
			return nil, fmt.Errorf("inspect %s: %w", streams[i], err)
		}
		to, resume, ok := trimmed(info, cursor)
		if !ok {
			continue
		}
		if g == nil {
			g = &Gap{From: cursor}
		}
		if g.To.Less(to) {
			g.To = to
		}
		if resume != eventlog.Zero && (g.Resume == eventlog.Zero || resume.Less(g.Resume)) {
			g.Resume = resume
		}
		if t := eventlog.TypeOfStream(streams[i]); !slices.Contains(g.Types, t) {
			g.Types = append(g.Types, t)
		}
	}
	if g != nil {
		slices.Sort(g.Types)
	}
	return g, nil
}

// trimmed reports whether a stream lost entries after cursor, the newest
// id that may be lost, and the oldest one retained (Zero: none).
func trimmed(info *redis.XInfoStream, cursor eventlog.ID) (to, resume eventlog.ID, ok bool) {
	if info.EntriesAdded <= info.Length {
		return to, resume, false // nothing was ever removed
	}
	if deleted, err := eventlog.ParseID(info.MaxDeletedEntryID); err == nil && cursor.Less(deleted) {
		to, ok = deleted, true // XDEL records what it removed
	}
	if info.Length == 0 || info.FirstEntry.ID == "" {
		last, err := eventlog.ParseID(info.LastGeneratedID)
		if err == nil && cursor.Less(last) && to.Less(last) {
			to, ok = last, true
		}
		return to, resume, ok
	}
	first, err := eventlog.ParseID(info.FirstEntry.ID)
	if err != nil {
		return to, resume, ok
	}
	if before := predecessor(first); cursor.Less(before) {
		if to.Less(before) {
			to = before
		}
		ok = true
	}
	if ok {
		resume = first
	}
	return to, resume, ok
}

// predecessor is the id just before id.
func predecessor(id eventlog.ID) eventlog.ID {
	switch {
	case id.Seq > 0:
		return eventlog.ID{Ms: id.Ms, Seq: id.Seq - 1}
	case id.Ms > 0:
		return eventlog.ID{Ms: id.Ms - 1, Seq: math.MaxUint64}
	}
	return eventlog.Zero
}

// reportGap tells report about a gap after cursor in streams, if any.
func (h *Hub) reportGap(ctx context.Context, streams []string, cursor eventlog.ID, report func(Gap) error) error {
	g, err := FindGap(ctx, h.rdb, streams, cursor)
	if err != nil || g == nil {
		return err
	}
	return report(*g)
}
