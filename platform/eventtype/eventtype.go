// Package eventtype holds the rules for event type names and subscription
// patterns that every service applies the same way.
package eventtype

import (
	"fmt"
	"strings"
)

// MaxNameLength bounds a name (it becomes part of Redis keys).
const MaxNameLength = 200

// ValidateName checks a name: lower-case dotted segments, at least two
// (domain.entity.action, e.g. billing.invoice.paid), each starting with a
// letter and made of a-z, 0-9, '_' and '-'.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("event type name is empty")
	}
	if len(name) > MaxNameLength {
		return fmt.Errorf("event type name is longer than %d characters", MaxNameLength)
	}
	segs := strings.Split(name, ".")
	if len(segs) < 2 {
		return fmt.Errorf("event type name %q must have at least two dotted segments, like billing.invoice.paid", name)
	}
	for _, s := range segs {
		if err := validSegment(s); err != nil {
			return fmt.Errorf("event type name %q: %w", name, err)
		}
	}
	return nil
}

func validSegment(s string) error {
	if s == "" {
		return fmt.Errorf("empty segment")
	}
	if s[0] < 'a' || s[0] > 'z' {
		return fmt.Errorf("segment %q must start with a lower-case letter", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("segment %q has %q: only a-z, 0-9, '_' and '-' are allowed", s, c)
		}
	}
	return nil
}

// ValidatePattern checks a subscription pattern: an exact name, a prefix
// followed by ".*" (billing.*, billing.invoice.*), or "*" for everything.
func ValidatePattern(p string) error {
	if p == "*" {
		return nil
	}
	if prefix, ok := strings.CutSuffix(p, ".*"); ok {
		for _, s := range strings.Split(prefix, ".") {
			if err := validSegment(s); err != nil {
				return fmt.Errorf("pattern %q: %w", p, err)
			}
		}
		return nil
	}
	if strings.Contains(p, "*") {
		return fmt.Errorf("pattern %q: '*' may only stand alone or as the last segment (billing.*)", p)
	}
	if err := ValidateName(p); err != nil {
		return fmt.Errorf("pattern: %w", err)
	}
	return nil
}

// Match reports whether name matches pattern. "billing.*" matches every name
// under billing, at any depth; it does not match "billing" itself.
func Match(pattern, name string) bool {
	if pattern == "*" {
		return true
	}
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(name, prefix) && len(name) > len(prefix)
	}
	return pattern == name
}

// MatchAny reports whether name matches one of the patterns.
func MatchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if Match(p, name) {
			return true
		}
	}
	return false
}

// ParsePatterns splits a comma-separated list and validates each pattern.
func ParsePatterns(list []string) ([]string, error) {
	var out []string
	for _, item := range list {
		for _, p := range strings.Split(item, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			if err := ValidatePattern(p); err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no event types given: name at least one type or pattern (billing.*)")
	}
	return out, nil
}
