// Package pricing is the billing arithmetic, pure: it prices a month of
// delivered events under a plan version, in integer minor units of one
// ISO 4217 currency, and splits amounts by largest remainder so that the
// parts always add up to the whole. It does no I/O.
//
// The rules, in order:
//   - Included units are free and taken first, in time order: the usage is
//     sorted by time (the quarter-hour bucket), then event type, producer and
//     channel, and the first IncludedUnits units are free whatever rule
//     would have priced them.
//   - Each remaining unit goes to the first rule (in declared order) that
//     matches its event type: an exact type or a pattern (shop.order.*), a
//     domain (the first segment), or a registry product (one of the
//     product's patterns); a unit no rule matches costs DefaultUnitPrice.
//   - A rule prices the month's total of its units: FLAT at one price,
//     GRADUATED each unit at the price of the tier it falls in, VOLUME every
//     unit at the price of the tier the total reaches.
//   - A usage line is shared among the producers of its units in proportion
//     to their units of the rule (largest remainder).
//   - The revenue-share pool is floor(usage * bps / 10000), split among the
//     producers by largest remainder in proportion to their revenue.
package pricing

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/heraldmesh/herald/platform/eventtype"
	"golang.org/x/text/currency"
)

// Model is how a rule prices its units.
type Model int

// The models.
const (
	Flat Model = iota
	Graduated
	Volume
)

// Tier is one tier: units up to UpTo (inclusive; 0 on the last tier:
// unbounded) at UnitPrice.
type Tier struct {
	UpTo, UnitPrice int64
}

// Rule prices the events it matches; exactly one of EventType, Domain and
// Product is set.
type Rule struct {
	EventType, Domain, Product string
	Model                      Model
	UnitPrice                  int64
	Tiers                      []Tier
	Description                string
}

// Plan is one plan version's prices.
type Plan struct {
	Currency         string
	MonthlyFee       int64
	IncludedUnits    int64
	Rules            []Rule
	DefaultUnitPrice int64
	RevenueShareBPS  int64
}

// Products maps a product id to its event type patterns.
type Products map[string][]string

// ValidateCurrency checks an ISO 4217 code (upper case, three letters, known).
func ValidateCurrency(code string) error {
	if len(code) != 3 || strings.ToUpper(code) != code {
		return fmt.Errorf("currency %q is not an ISO 4217 code (three upper-case letters, like EUR)", code)
	}
	if _, err := currency.ParseISO(code); err != nil {
		return fmt.Errorf("currency %q is not a known ISO 4217 code", code)
	}
	return nil
}

// Validate checks a plan; products (nil: not checked) are the known ones.
// Its messages are meant for the caller.
func (p Plan) Validate(products Products) error {
	if err := ValidateCurrency(p.Currency); err != nil {
		return err
	}
	switch {
	case p.MonthlyFee < 0:
		return fmt.Errorf("monthly fee %d is negative", p.MonthlyFee)
	case p.IncludedUnits < 0:
		return fmt.Errorf("included units %d is negative", p.IncludedUnits)
	case p.DefaultUnitPrice < 0:
		return fmt.Errorf("default unit price %d is negative", p.DefaultUnitPrice)
	case p.RevenueShareBPS < 0 || p.RevenueShareBPS > 10000:
		return fmt.Errorf("revenue share %d basis points is outside 0..10000", p.RevenueShareBPS)
	case len(p.Rules) > 200:
		return fmt.Errorf("%d rules: at most 200", len(p.Rules))
	}
	for i, r := range p.Rules {
		if err := r.validate(products); err != nil {
			return fmt.Errorf("rule %d: %w", i, err)
		}
	}
	return nil
}

func (r Rule) validate(products Products) error {
	n := 0
	for _, s := range []string{r.EventType, r.Domain, r.Product} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return errors.New("set exactly one of event_type, domain and product")
	}
	switch {
	case r.EventType != "":
		if err := eventtype.ValidatePattern(r.EventType); err != nil {
			return err
		}
	case r.Domain != "":
		if err := eventtype.ValidatePattern(r.Domain + ".*"); err != nil {
			return fmt.Errorf("domain %q is not a valid domain name", r.Domain)
		}
	default:
		if products != nil {
			if _, ok := products[r.Product]; !ok {
				return fmt.Errorf("product %q is not in the registry", r.Product)
			}
		}
	}
	switch r.Model {
	case Flat:
		if r.UnitPrice < 0 {
			return fmt.Errorf("unit price %d is negative", r.UnitPrice)
		}
		if len(r.Tiers) > 0 {
			return errors.New("a FLAT rule has no tiers (use GRADUATED or VOLUME)")
		}
	case Graduated, Volume:
		if r.UnitPrice != 0 {
			return errors.New("a tiered rule prices by its tiers: unit_price_minor must be 0")
		}
		if len(r.Tiers) == 0 {
			return errors.New("a GRADUATED or VOLUME rule needs tiers")
		}
		if len(r.Tiers) > 50 {
			return fmt.Errorf("%d tiers: at most 50", len(r.Tiers))
		}
		var prev int64
		for i, t := range r.Tiers {
			last := i == len(r.Tiers)-1
			switch {
			case t.UnitPrice < 0:
				return fmt.Errorf("tier %d: unit price %d is negative", i+1, t.UnitPrice)
			case last && t.UpTo != 0:
				return fmt.Errorf("tier %d: the last tier must be unbounded (up_to 0)", i+1)
			case !last && t.UpTo <= prev:
				return fmt.Errorf("tier %d: up_to %d must be greater than the previous tier's %d (tiers sorted, strictly increasing)", i+1, t.UpTo, prev)
			}
			prev = t.UpTo
		}
	default:
		return fmt.Errorf("pricing model %d is not known", r.Model)
	}
	return nil
}

// Matches reports whether r matches an event type.
func (r Rule) Matches(products Products, eventType string) bool {
	switch {
	case r.EventType != "":
		return eventtype.Match(r.EventType, eventType)
	case r.Domain != "":
		d, _, _ := strings.Cut(eventType, ".")
		return d == r.Domain
	default:
		return eventtype.MatchAny(products[r.Product], eventType)
	}
}

// Usage is delivered events of one type and producer in one bucket.
type Usage struct {
	Time                         time.Time
	EventType, Producer, Channel string
	Units                        int64
}

// LineKind is what a line charges for.
type LineKind int

// The kinds of line.
const (
	Fee LineKind = iota + 1
	Included
	UsageLine
)

// Part is one producer's part of a usage line.
type Part struct {
	Producer         string
	Quantity, Amount int64
}

// Line is one invoice line. RuleIndex is -1 for the fee, included units and
// the default price. Tier is 1-based (0: not tiered).
type Line struct {
	Kind                                    LineKind
	Description, EventType, Domain, Product string
	RuleIndex, Tier                         int
	Quantity, UnitPrice, Amount             int64
	Producers                               []Part
}

// Share is a producer's revenue and revenue share.
type Share struct {
	Producer       string
	Revenue, Share int64
}

// Result is a priced month.
type Result struct {
	Lines []Line
	// Subtotal is the sum of the line amounts; Usage of the usage lines'.
	Subtotal, Usage int64
	// Shares by producer name.
	Shares []Share
}

// ErrOverflow is returned when an amount does not fit in int64.
var ErrOverflow = errors.New("amount overflows int64 minor units")

func mul(a, b int64) (int64, error) {
	if a == 0 || b == 0 {
		return 0, nil
	}
	c := a * b
	if a < 0 || b < 0 || c/b != a {
		return 0, ErrOverflow
	}
	return c, nil
}

func add(a, b int64) (int64, error) {
	if b > 0 && a > math.MaxInt64-b {
		return 0, ErrOverflow
	}
	return a + b, nil
}

// MulDiv returns floor(a*b/c) for a, b >= 0, c > 0 and b <= c, and the
// remainder, without overflow.
func MulDiv(a, b, c int64) (q, r int64) {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	uq, ur := bits.Div64(hi, lo, uint64(c))
	return int64(uq), int64(ur)
}

// Split divides total (>= 0) among weights (>= 0) in proportion, by largest
// remainder: each part is floor(total*w/W), and the units left over go one
// each to the largest remainders, ties to the lower index. The parts add up
// to total exactly. All weights 0 (or none): all parts 0 except that the
// whole goes to index 0 when there is one (nothing is lost).
func Split(total int64, weights []int64) []int64 {
	parts := make([]int64, len(weights))
	if len(weights) == 0 || total <= 0 {
		return parts
	}
	var sum int64
	for _, w := range weights {
		if w < 0 {
			panic("pricing: negative weight")
		}
		var err error
		if sum, err = add(sum, w); err != nil {
			panic("pricing: weights overflow")
		}
	}
	if sum == 0 {
		parts[0] = total
		return parts
	}
	rems := make([]int64, len(weights))
	left := total
	for i, w := range weights {
		parts[i], rems[i] = MulDiv(total, w, sum)
		left -= parts[i]
	}
	order := make([]int, len(weights))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(rems[b], rems[a]) })
	for _, i := range order[:left] {
		parts[i]++
	}
	return parts
}

type ruleUse struct {
	units     int64
	producers map[string]int64
}

// Price prices usage (any order) under p. p must be valid.
func Price(p Plan, products Products, usage []Usage) (Result, error) {
	us := slices.Clone(usage)
	slices.SortStableFunc(us, func(a, b Usage) int {
		return cmp.Or(a.Time.Compare(b.Time), cmp.Compare(a.EventType, b.EventType), cmp.Compare(a.Producer, b.Producer), cmp.Compare(a.Channel, b.Channel))
	})
	var res Result
	if p.MonthlyFee > 0 {
		res.Lines = append(res.Lines, Line{Kind: Fee, Description: "Monthly fee", RuleIndex: -1, Quantity: 1, UnitPrice: p.MonthlyFee, Amount: p.MonthlyFee})
	}
	free := p.IncludedUnits
	var used int64
	uses := make([]ruleUse, len(p.Rules)+1) // last: the default price
	for _, u := range us {
		n := u.Units
		if n <= 0 {
			continue
		}
		if free > 0 {
			f := min(free, n)
			free -= f
			used += f
			n -= f
		}
		if n == 0 {
			continue
		}
		i := len(p.Rules)
		for j, r := range p.Rules {
			if r.Matches(products, u.EventType) {
				i = j
				break
			}
		}
		ru := &uses[i]
		if ru.producers == nil {
			ru.producers = map[string]int64{}
		}
		var err error
		if ru.units, err = add(ru.units, n); err != nil {
			return Result{}, err
		}
		ru.producers[u.Producer] += n
	}
	if p.IncludedUnits > 0 {
		res.Lines = append(res.Lines, Line{Kind: Included, Description: "Included units", RuleIndex: -1, Quantity: used})
	}
	for i, ru := range uses {
		if ru.units == 0 {
			continue
		}
		var lines []Line
		var err error
		if i == len(p.Rules) {
			lines, err = priceFlat(Line{Kind: UsageLine, Description: "Other events", EventType: "*", RuleIndex: -1}, ru.units, p.DefaultUnitPrice)
		} else {
			lines, err = priceRule(p.Rules[i], i, ru.units)
		}
		if err != nil {
			return Result{}, err
		}
		names := make([]string, 0, len(ru.producers))
		for n := range ru.producers {
			names = append(names, n)
		}
		slices.Sort(names)
		weights := make([]int64, len(names))
		for k, n := range names {
			weights[k] = ru.producers[n]
		}
		for _, l := range lines {
			qs, as := Split(l.Quantity, weights), Split(l.Amount, weights)
			for k, n := range names {
				l.Producers = append(l.Producers, Part{Producer: n, Quantity: qs[k], Amount: as[k]})
			}
			res.Lines = append(res.Lines, l)
		}
	}
	revenue := map[string]int64{}
	for _, l := range res.Lines {
		var err error
		if res.Subtotal, err = add(res.Subtotal, l.Amount); err != nil {
			return Result{}, err
		}
		if l.Kind == UsageLine {
			res.Usage += l.Amount // <= Subtotal: no overflow
			for _, pt := range l.Producers {
				revenue[pt.Producer] += pt.Amount
			}
		}
	}
	if len(revenue) > 0 {
		names := make([]string, 0, len(revenue))
		for n := range revenue {
			names = append(names, n)
		}
		slices.Sort(names)
		weights := make([]int64, len(names))
		for k, n := range names {
			weights[k] = revenue[n]
		}
		pool, _ := MulDiv(res.Usage, p.RevenueShareBPS, 10000)
		shares := Split(pool, weights)
		for k, n := range names {
			res.Shares = append(res.Shares, Share{Producer: n, Revenue: weights[k], Share: shares[k]})
		}
	}
	return res, nil
}

func label(r Rule) (string, string, string, string) {
	d := r.Description
	switch {
	case r.EventType != "":
		return cmp.Or(d, "Events "+r.EventType), r.EventType, "", ""
	case r.Domain != "":
		return cmp.Or(d, "Domain "+r.Domain), "", r.Domain, ""
	default:
		return cmp.Or(d, "Product "+r.Product), "", "", r.Product
	}
}

func priceFlat(l Line, units, price int64) ([]Line, error) {
	amount, err := mul(units, price)
	if err != nil {
		return nil, err
	}
	l.Quantity, l.UnitPrice, l.Amount = units, price, amount
	return []Line{l}, nil
}

func priceRule(r Rule, index int, units int64) ([]Line, error) {
	base := Line{Kind: UsageLine, RuleIndex: index}
	base.Description, base.EventType, base.Domain, base.Product = label(r)
	switch r.Model {
	case Graduated:
		var out []Line
		var prev int64
		for i, t := range r.Tiers {
			hi := t.UpTo
			if hi == 0 || hi > units {
				hi = units
			}
			if hi <= prev {
				break
			}
			ls, err := priceFlat(base, hi-prev, t.UnitPrice)
			if err != nil {
				return nil, err
			}
			ls[0].Tier = i + 1
			out = append(out, ls[0])
			prev = hi
		}
		return out, nil
	case Volume:
		i := len(r.Tiers) - 1
		for j, t := range r.Tiers {
			if t.UpTo == 0 || units <= t.UpTo {
				i = j
				break
			}
		}
		ls, err := priceFlat(base, units, r.Tiers[i].UnitPrice)
		if err != nil {
			return nil, err
		}
		ls[0].Tier = i + 1
		return ls, nil
	default:
		return priceFlat(base, units, r.UnitPrice)
	}
}
