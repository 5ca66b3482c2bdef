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

// MaxProductLength bounds a product name.
const MaxProductLength = 100

// ValidateDomain checks a domain name: exactly what may start an event type
// name, one segment (billing), starting with a lower-case letter, made of
// a-z, 0-9, '_' and '-', at most MaxNameLength characters.
func ValidateDomain(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("not a domain name: it is empty")
	case len(name) > MaxNameLength:
		return fmt.Errorf("not a domain name: longer than %d characters", MaxNameLength)
	case strings.Contains(name, "."):
		return fmt.Errorf("not a domain name: %q must be one segment without dots, like billing", name)
	case validSegment(name) != nil:
		return fmt.Errorf("not a domain name: %q must start with a lower-case letter and use only a-z, 0-9, '_' and '-'", name)
	}
	return nil
}

// ValidateProduct checks a product name: starting with a lower-case letter,
// made of a-z, 0-9 and '-' (no '_', no dots), at most MaxProductLength
// characters, like checkout-api.
func ValidateProduct(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("not a product name: it is empty")
	case len(name) > MaxProductLength:
		return fmt.Errorf("not a product name: longer than %d characters", MaxProductLength)
	}
	ok := name[0] >= 'a' && name[0] <= 'z'
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
	}
	if !ok {
		return fmt.Errorf("not a product name: %q must start with a lower-case letter and use only a-z, 0-9 and '-'", name)
	}
	return nil
}

// DomainOf is the domain of an event type name: its first segment.
func DomainOf(name string) string {
	d, _, _ := strings.Cut(name, ".")
	return d
}
