package usage

import (
	"testing"
	"time"
)

// TestSeenShardIsStable pins the shard function: metering's seen sets and
// whoever checks them must agree on it across versions.
func TestSeenShardIsStable(t *testing.T) {
	// FNV-1a 32 of "" is 0x811c9dc5, of "a" 0xe40c292c.
	for id, want := range map[string]int{"": 0x5, "a": 0xc} {
		if got := SeenShard(id); got != want {
			t.Errorf("SeenShard(%q) = %d, want %d", id, got, want)
		}
	}
	at := time.Date(2026, 12, 3, 23, 59, 0, 0, time.FixedZone("x", 3600))
	if got := SeenSetKey(at, "a"); got != "herald:{usage}:s:20261203:c" {
		t.Errorf("SeenSetKey = %q", got)
	}
}
