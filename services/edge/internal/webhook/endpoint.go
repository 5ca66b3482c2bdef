package webhook

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/webhook"
	"golang.org/x/time/rate"
)

// Defaults of an endpoint's settings, where the registry left one unset.
var (
	// DefaultSchedule is the wait after each failed attempt, before full
	// jitter (a retry waits a random time between zero and the entry): the
	// registry's default, which it stores on every endpoint. Eight
	// attempts, over about 14 hours on average and at most about 28.
	DefaultSchedule = []time.Duration{
		5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour,
	}
	DefaultTimeout      = 15 * time.Second
	DefaultConcurrency  = 10
	DefaultDisableAfter = 5 * 24 * time.Hour
)

// endpoint is a webhook subscription's settings as the engine uses them.
type endpoint struct {
	id, app      string
	url          string
	headers      map[string]string
	timeout      time.Duration
	mode         registryv1.WebhookContentMode
	jsonData     bool // Protobuf and Avro data rendered as JSON
	ordering     registryv1.WebhookOrdering
	concurrency  int
	limiter      *rate.Limiter // nil: no limit
	schedule     []time.Duration
	disableAfter time.Duration

	box     *secretbox.Box
	secrets []*registryv1.WebhookSecret

	mu          sync.Mutex
	signer      *webhook.Signer
	signerUntil time.Time // when a secret of the signer expires
}

// errNoSecret is why an endpoint cannot be delivered to.
var errNoSecret = errors.New("the endpoint has no signing secret that can be opened")

// endpointOf reads a webhook subscription's settings.
func endpointOf(sub *registryv1.Subscription, box *secretbox.Box) *endpoint {
	wh := sub.GetWebhook()
	ep := &endpoint{
		id: sub.GetId(), app: sub.GetApplicationId(), url: wh.GetUrl(), headers: wh.GetHeaders(),
		timeout: DefaultTimeout, mode: wh.GetContentMode(), jsonData: wh.GetJsonData(), ordering: wh.GetOrdering(),
		concurrency: DefaultConcurrency, schedule: DefaultSchedule, disableAfter: DefaultDisableAfter,
		box: box, secrets: wh.GetSecrets(),
	}
	if d := wh.GetTimeout().AsDuration(); d > 0 {
		ep.timeout = d
	}
	if n := int(wh.GetMaxConcurrency()); n > 0 {
		ep.concurrency = n
	}
	if ep.ordering == registryv1.WebhookOrdering_WEBHOOK_ORDERING_ORDERED {
		ep.concurrency = 1
	}
	if r := wh.GetRateLimit(); r > 0 {
		ep.limiter = rate.NewLimiter(rate.Limit(r), max(1, int(r/10)))
	}
	if s := wh.GetRetrySchedule(); len(s) > 0 {
		ep.schedule = make([]time.Duration, len(s))
		for i, d := range s {
			ep.schedule[i] = d.AsDuration()
		}
	}
	if d := wh.GetDisableAfter().AsDuration(); d > 0 {
		ep.disableAfter = d
	}
	return ep
}

// attempts is how many attempts an event gets.
func (ep *endpoint) attempts() int { return len(ep.schedule) + 1 }

// delay is the wait after the n-th failed attempt (1-based): full jitter
// over the schedule's entry, and at least what the endpoint asked for.
func (ep *endpoint) delay(n int, asked time.Duration) time.Duration {
	base := ep.schedule[min(max(n-1, 0), len(ep.schedule)-1)]
	d := time.Duration(rand.Int64N(int64(base) + 1))
	return max(d, asked)
}

// currentSigner returns a signer of the secrets that sign now: every
// secret not past its expiry (a rotation's overlap signs with both).
func (ep *endpoint) currentSigner(now time.Time) (*webhook.Signer, error) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.signer != nil && (ep.signerUntil.IsZero() || now.Before(ep.signerUntil)) {
		return ep.signer, nil
	}
	if ep.box == nil {
		return nil, fmt.Errorf("%w: HERALD_SECRET_KEY is not set on the edge", errNoSecret)
	}
	var keys []string
	var until time.Time
	for _, s := range ep.secrets {
		if t := s.GetExpireTime(); t != nil {
			exp := t.AsTime()
			if !now.Before(exp) {
				continue
			}
			if until.IsZero() || exp.Before(until) {
				until = exp
			}
		}
		plain, err := ep.box.Open(s.GetSealed(), ep.id+"/"+s.GetId())
		if err != nil {
			continue
		}
		k := string(plain)
		if !strings.HasPrefix(k, webhook.PrefixSecret) && !strings.HasPrefix(k, webhook.PrefixSigningKey) {
			k = webhook.PrefixSecret + k
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errNoSecret
	}
	signer, err := webhook.NewSigner(keys...)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoSecret, err)
	}
	ep.signer, ep.signerUntil = signer, until
	return signer, nil
}
