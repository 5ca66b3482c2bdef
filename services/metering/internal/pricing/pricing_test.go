package pricing

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func TestSplit(t *testing.T) {
	for _, c := range []struct {
		total   int64
		weights []int64
		want    []int64
	}{
		{100, []int64{1, 1, 1}, []int64{34, 33, 33}},
		{10, []int64{5, 3, 2}, []int64{5, 3, 2}},
		{1, []int64{1, 2}, []int64{0, 1}},
		{7, []int64{1, 1}, []int64{4, 3}},
		{0, []int64{1, 2}, []int64{0, 0}},
		{5, []int64{0, 0}, []int64{5, 0}},
		{5, nil, []int64{}},
		{1 << 62, []int64{1 << 62, 1 << 61, 3}, nil},
	} {
		got := Split(c.total, c.weights)
		var sum int64
		for _, p := range got {
			sum += p
		}
		if c.total > 0 && len(c.weights) > 0 && sum != c.total {
			t.Errorf("Split(%d, %v) = %v: sum %d", c.total, c.weights, got, sum)
		}
		if c.want != nil && !slices.Equal(got, c.want) {
			t.Errorf("Split(%d, %v) = %v, want %v", c.total, c.weights, got, c.want)
		}
	}
}

func FuzzSplit(f *testing.F) {
	f.Add(int64(100), int64(1), int64(1), int64(1))
	f.Add(int64(1<<62), int64(1<<60), int64(7), int64(0))
	f.Add(int64(0), int64(0), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, total, a, b, c int64) {
		if total < 0 || a < 0 || b < 0 || c < 0 || a > 1<<61 || b > 1<<61 || c > 1<<61 {
			t.Skip()
		}
		w := []int64{a, b, c}
		parts := Split(total, w)
		var sum int64
		for i, p := range parts {
			if p < 0 {
				t.Fatalf("negative part %v", parts)
			}
			// Each part is floor or floor+1 of its exact share.
			if a+b+c > 0 {
				q, _ := MulDiv(total, w[i], a+b+c)
				if p != q && p != q+1 {
					t.Fatalf("part %d = %d, exact floor %d (%v)", i, p, q, parts)
				}
			}
			sum += p
		}
		if sum != total {
			t.Fatalf("Split(%d, %v) = %v sums to %d", total, w, parts, sum)
		}
	})
}

func TestValidate(t *testing.T) {
	ok := Plan{Currency: "EUR"}
	for _, c := range []struct {
		p    Plan
		want string
	}{
		{ok, ""},
		{Plan{Currency: "XYZ"}, "not a known ISO 4217"},
		{Plan{Currency: "eur"}, "not an ISO 4217 code"},
		{Plan{Currency: "EUR", MonthlyFee: -1}, "monthly fee -1 is negative"},
		{Plan{Currency: "EUR", RevenueShareBPS: 10001}, "outside 0..10000"},
		{Plan{Currency: "EUR", Rules: []Rule{{EventType: "a.b", UnitPrice: -2}}}, "unit price -2 is negative"},
		{Plan{Currency: "EUR", Rules: []Rule{{EventType: "a.b", Domain: "a"}}}, "exactly one"},
		{Plan{Currency: "EUR", Rules: []Rule{{EventType: "a.*.b"}}}, "'*'"},
		{Plan{Currency: "EUR", Rules: []Rule{{Product: "nope"}}}, `product "nope" is not in the registry`},
		{Plan{Currency: "EUR", Rules: []Rule{{Domain: "a", Model: Graduated, Tiers: []Tier{{UpTo: 10}, {UpTo: 5}, {}}}}}, "tier 2: up_to 5 must be greater"},
		{Plan{Currency: "EUR", Rules: []Rule{{Domain: "a", Model: Volume, Tiers: []Tier{{UpTo: 10}}}}}, "last tier must be unbounded"},
		{Plan{Currency: "EUR", Rules: []Rule{{Domain: "a", Model: Volume}}}, "needs tiers"},
	} {
		err := c.p.Validate(Products{"orders": {"shop.order.*"}})
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.p, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want %q", c.p, err, c.want)
		}
	}
}

func TestPrice(t *testing.T) {
	products := Products{"orders": {"shop.order.*"}}
	p := Plan{
		Currency: "EUR", MonthlyFee: 1000, IncludedUnits: 5, DefaultUnitPrice: 2, RevenueShareBPS: 3000,
		Rules: []Rule{
			{EventType: "shop.order.paid", Model: Graduated, Tiers: []Tier{{UpTo: 10, UnitPrice: 10}, {UpTo: 20, UnitPrice: 5}, {UnitPrice: 1}}},
			{Product: "orders", UnitPrice: 3},
			{Domain: "billing", Model: Volume, Tiers: []Tier{{UpTo: 3, UnitPrice: 100}, {UnitPrice: 50}}},
		},
	}
	usage := []Usage{
		// Earliest: the 5 included units come from here (3 of them) and the next bucket.
		{Time: t0, EventType: "shop.order.created", Producer: "p1", Units: 3},
		{Time: t0.Add(15 * time.Minute), EventType: "shop.order.paid", Producer: "p1", Units: 12}, // 2 free, 10 paid
		{Time: t0.Add(30 * time.Minute), EventType: "shop.order.paid", Producer: "p2", Units: 15},
		{Time: t0.Add(30 * time.Minute), EventType: "shop.order.created", Producer: "p2", Units: 4},
		{Time: t0.Add(45 * time.Minute), EventType: "billing.invoice.paid", Producer: "p1", Units: 4},
		{Time: t0.Add(45 * time.Minute), EventType: "ops.disk.full", Producer: "p3", Units: 7},
	}
	res, err := Price(p, products, usage)
	if err != nil {
		t.Fatal(err)
	}
	// shop.order.paid: 25 units graduated: 10*10 + 10*5 + 5*1 = 155.
	// orders (shop.order.created): 4 * 3 = 12. billing: 4 units, volume tier 2: 200.
	// default: 7 * 2 = 14. Usage 381; fee 1000; subtotal 1381.
	var got []string
	for _, l := range res.Lines {
		got = append(got, strings.Join([]string{l.Description, itoa(l.Tier), itoa(l.Quantity), itoa(l.UnitPrice), itoa(l.Amount)}, " "))
	}
	want := []string{
		"Monthly fee 0 1 1000 1000",
		"Included units 0 5 0 0",
		"Events shop.order.paid 1 10 10 100",
		"Events shop.order.paid 2 10 5 50",
		"Events shop.order.paid 3 5 1 5",
		"Product orders 0 4 3 12",
		"Domain billing 2 4 50 200",
		"Other events 0 7 2 14",
	}
	if !slices.Equal(got, want) {
		t.Errorf("lines:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if res.Subtotal != 1381 || res.Usage != 381 {
		t.Errorf("subtotal %d usage %d", res.Subtotal, res.Usage)
	}
	// Graduated tier 1 (100) split p1:p2 = 10:15 -> 40, 60.
	if pt := res.Lines[2].Producers; pt[0].Amount != 40 || pt[1].Amount != 60 || pt[0].Quantity != 4 || pt[1].Quantity != 6 {
		t.Errorf("tier 1 parts %+v", pt)
	}
	// Revenue: p1 = 40+20+2 (tier3: 5 split 10:15 -> 2,3) + 200 = 262; p2 = 60+30+3+12 = 105; p3 = 14.
	// Pool floor(381*0.3) = 114, by 262:105:14: exact 78.39, 31.42, 4.19 -> 78, 31, 4 and the
	// unit left over to the largest remainder (p2): 78, 32, 4.
	wantShares := []Share{{"p1", 262, 78}, {"p2", 105, 32}, {"p3", 14, 4}}
	if !slices.Equal(res.Shares, wantShares) {
		t.Errorf("shares %+v, want %+v", res.Shares, wantShares)
	}
}

func TestVolumeAndOverflow(t *testing.T) {
	p := Plan{Currency: "JPY", Rules: []Rule{{EventType: "*", Model: Volume, Tiers: []Tier{{UpTo: 100, UnitPrice: 5}, {UpTo: 1000, UnitPrice: 3}, {UnitPrice: 1}}}}}
	for _, c := range []struct{ units, want int64 }{{100, 500}, {101, 303}, {1000, 3000}, {1001, 1001}} {
		res, err := Price(p, nil, []Usage{{Time: t0, EventType: "a.b", Units: c.units}})
		if err != nil || res.Subtotal != c.want {
			t.Errorf("%d units: %d, %v; want %d", c.units, res.Subtotal, err, c.want)
		}
	}
	big := Plan{Currency: "EUR", DefaultUnitPrice: 1 << 40}
	if _, err := Price(big, nil, []Usage{{Time: t0, EventType: "a.b", Units: 1 << 30}}); err != ErrOverflow {
		t.Errorf("overflow: %v", err)
	}
}

func itoa[T ~int | ~int64](n T) string { return strconv.FormatInt(int64(n), 10) }
