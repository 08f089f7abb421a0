// Package verifier is keyledger's hot path: it decides, for one presented
// key, whether the request may go on. It checks the key's format and
// checksum, hashes it once, looks the hash up in the projector's table, then
// checks status, environment, expiry, permission and rate limit, and records
// a KeyUsed event without waiting for anything.
//
// The package also serves the HTTP endpoints verifier nodes expose:
// POST /v1/verify, the forward-auth endpoint /v1/authz for nginx
// auth_request, Traefik ForwardAuth and Envoy ext_authz, /healthz and
// /readyz, as a net/http Handler; and the forward-auth endpoint alone for
// fasthttp (AuthzFastHTTP), which keyledger serve uses because forward
// auth is nearly all of a node's traffic.
package verifier

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/quota"
	"golang.org/x/time/rate"
)

// DefaultTestRateLimit is the per-key token bucket of test keys, as Stripe
// does for its test mode: test traffic is for development, not load.
var DefaultTestRateLimit = keyledger.RateLimit{PerSecond: 25, Burst: 50}

// minForeignKeyLen is the shortest imported (foreign-format) key looked up.
const minForeignKeyLen = 16

// Recorder receives a KeyUsed event for every verification. It must not
// block: the verifier calls it on the request path.
type Recorder interface {
	Record(ev events.KeyUsed)
}

// Config configures a Verifier.
type Config struct {
	// Environment this node serves; keys of the other one are refused.
	Environment keyledger.Environment
	// Format of keys (default keyledger.DefaultFormat).
	Format keyledger.Format
	// Catalog resolves required permissions (default keyledger.DefaultCatalog).
	Catalog *keyledger.Catalog
	// TestRateLimit applies to test keys that carry no limit of their own.
	TestRateLimit keyledger.RateLimit
	// Ready reports whether the node's table can be trusted (caught up and
	// fresh). When it returns false every verification is refused as
	// unavailable: failing closed is the only safe default for revocation.
	Ready func() bool
	// Broken, if set, says why the node refuses every key for good (the
	// ledger's stream was replaced), for /readyz to tell; "" otherwise.
	Broken func() string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Node names this node in KeyUsed events.
	Node string
	// Usage receives KeyUsed events (nil: none are recorded).
	Usage Recorder
	// Meter and Accounts, when both are set, enforce plans' quotas,
	// keys' credits and fleet-wide rate limits (see package quota);
	// without them rate limits hold per node and nothing else is
	// metered.
	Meter    *quota.Meter
	Accounts Accounts
}

// Verifier verifies keys against a projector's table. It is safe for
// concurrent use and takes no lock shared by all requests.
type Verifier struct {
	cfg   Config
	table *projector.Table
	// since is time.Since unless a clock is injected: it reads only the
	// monotonic clock, half the cost of time.Now on the request path.
	since func(time.Time) time.Duration
	// meters is nil without fleet counters.
	meters *meters
}

// New returns a verifier over table.
func New(table *projector.Table, cfg Config) *Verifier {
	if cfg.Environment == keyledger.EnvUnknown {
		cfg.Environment = keyledger.EnvLive
	}
	if cfg.Format == (keyledger.Format{}) {
		cfg.Format = keyledger.DefaultFormat
	}
	if cfg.Catalog == nil {
		cfg.Catalog = keyledger.DefaultCatalog
	}
	if cfg.TestRateLimit.PerSecond <= 0 {
		cfg.TestRateLimit = DefaultTestRateLimit
	}
	v := &Verifier{cfg: cfg, table: table, since: time.Since}
	if cfg.Meter != nil && cfg.Accounts != nil {
		v.meters = &meters{m: cfg.Meter, accounts: cfg.Accounts}
	}
	if cfg.Now == nil {
		v.cfg.Now = time.Now
	} else {
		now := cfg.Now
		v.since = func(t time.Time) time.Duration { return now().Sub(t) }
	}
	return v
}

// Environment returns the environment this verifier serves.
func (v *Verifier) Environment() keyledger.Environment { return v.cfg.Environment }

// Ready reports whether the verifier's table can be trusted now (always,
// when Config.Ready is nil).
func (v *Verifier) Ready() bool { return v.cfg.Ready == nil || v.cfg.Ready() }

// ReadyError is nil when the verifier is ready, else why not: ErrNotReady,
// or an error naming the reason the node stopped for good.
func (v *Verifier) ReadyError() error {
	if v.cfg.Broken != nil {
		if why := v.cfg.Broken(); why != "" {
			return keyledger.Errorf(keyledger.Unavailable, "this node refuses every key until an operator intervenes: %s", why)
		}
	}
	if !v.Ready() {
		return ErrNotReady
	}
	return nil
}

// Start is when a request that arrives now started, for Request.Start: the
// clock is read only when a Recorder will record the time.
func (v *Verifier) Start() time.Time {
	if v.cfg.Usage == nil {
		return time.Time{}
	}
	return v.cfg.Now()
}

// Request is one verification. Only Key is required; the rest describes the
// request being authorized, for the usage record.
type Request struct {
	Key        string
	Permission string // required permission; "" requires none
	IP         string
	UserAgent  string
	Method     string
	Path       string
	// Start is when the request arrived, for the recorded latency
	// (default: when Verify is called).
	Start time.Time
	// Cost is how many credits a valid verification spends (below 1:
	// 1; keys without credits ignore it).
	Cost int64
}

// Result is the outcome of a verification.
type Result struct {
	Outcome keyledger.Outcome
	// Entry is the key's table entry when the key was found (even when it
	// was then refused), else nil.
	Entry *projector.Entry
	// RetryAfter is set when Outcome is OutcomeRateLimited.
	RetryAfter time.Duration
}

// Valid reports whether the request may go on.
func (r Result) Valid() bool { return r.Outcome == keyledger.OutcomeValid }

// Verify decides on one request and records it. A valid key costs one
// SHA-256, one lock-free table lookup, and no allocation.
func (v *Verifier) Verify(req *Request) Result {
	// Reading the clock costs as much as a quarter of a verification on
	// some machines, so it is read only when something needs it.
	var now time.Time
	if v.cfg.Usage != nil {
		now = req.Start
		if now.IsZero() {
			now = v.cfg.Now()
		}
	}
	res := v.check(req, &now)
	if v.cfg.Usage != nil {
		v.record(req, res, now)
	}
	return res
}

func (v *Verifier) clock(now *time.Time) time.Time {
	if now.IsZero() {
		*now = v.cfg.Now()
	}
	return *now
}

func (v *Verifier) check(req *Request, now *time.Time) Result {
	if v.cfg.Ready != nil && !v.cfg.Ready() {
		return Result{Outcome: keyledger.OutcomeUnavailable}
	}
	if len(req.Key) > keyledger.MaxSecretLen {
		return Result{Outcome: keyledger.OutcomeMalformed}
	}
	foreign := false
	if _, ok := v.cfg.Format.Parse(req.Key); !ok {
		// A key of keyledger's shape with a bad checksum is refused
		// before any work. A key of another shape can only be valid if
		// it was imported from another system, so it is looked up only
		// when the table holds imported keys.
		if !v.table.HasImported() || len(req.Key) < minForeignKeyLen || v.cfg.Format.Prefix(req.Key) != "" {
			return Result{Outcome: keyledger.OutcomeMalformed}
		}
		foreign = true
	}
	h := keyledger.HashSecret(req.Key)
	e := v.table.Lookup(&h)
	switch {
	case e == nil && foreign:
		return Result{Outcome: keyledger.OutcomeMalformed}
	case e == nil:
		return Result{Outcome: keyledger.OutcomeUnknown}
	case e.Revoked:
		return Result{Outcome: keyledger.OutcomeRevoked, Entry: e}
	case e.Disabled:
		return Result{Outcome: keyledger.OutcomeDisabled, Entry: e}
	case e.Environment != v.cfg.Environment:
		return Result{Outcome: keyledger.OutcomeEnvMismatch, Entry: e}
	case e.ExpiresAt != 0 && v.clock(now).UnixNano() >= e.ExpiresAt:
		return Result{Outcome: keyledger.OutcomeExpired, Entry: e}
	}
	if e.Extra != nil && e.Extra.Allowlist != nil {
		// Only keys with a list pay for parsing the address. An
		// address that does not parse (none known) is not on any list.
		ip, _ := netip.ParseAddr(req.IP)
		if !e.Extra.Allowlist.Allows(ip) {
			return Result{Outcome: keyledger.OutcomeIPNotAllowed, Entry: e}
		}
	}
	if req.Permission != "" {
		bit, _ := v.cfg.Catalog.Bit(req.Permission)
		// A permission missing from the catalog has bit 0: only "all"
		// grants it, and Has(0) would pass anything, so check it apart.
		if bit == 0 && !e.Perms.All() || !e.Perms.Has(bit) {
			return Result{Outcome: keyledger.OutcomeForbidden, Entry: e}
		}
	}
	km := v.keyMeters(e)
	if km != nil && km.Limiter != nil && !km.Limiter.AllowN(v.clock(now), 1) {
		return Result{Outcome: keyledger.OutcomeRateLimited, Entry: e, RetryAfter: retryAfter(km.Limiter, *now)}
	}
	if km != nil {
		cost := max(req.Cost, 1)
		if o, retry := v.meter(km, cost, now); o != keyledger.OutcomeValid {
			return Result{Outcome: o, Entry: e, RetryAfter: retry}
		}
	}
	return Result{Outcome: keyledger.OutcomeValid, Entry: e}
}

// retryAfter is how long until the bucket holds a whole token again.
func retryAfter(lim *rate.Limiter, now time.Time) time.Duration {
	missing := 1 - lim.TokensAt(now)
	if missing <= 0 {
		return 0
	}
	// A tiny rate (1e-9/s is valid) would overflow a Duration: cap it
	// at a day, which a client should read as "not soon".
	secs := missing / float64(lim.Limit())
	if !(secs < maxRetryAfter.Seconds()) {
		return maxRetryAfter
	}
	return time.Duration(secs * float64(time.Second))
}

// maxRetryAfter caps Retry-After.
const maxRetryAfter = 24 * time.Hour

func (v *Verifier) record(req *Request, res Result, now time.Time) {
	ev := events.KeyUsed{
		Header:      events.Header{Type: events.TypeKeyUsed, V: events.Version, At: now},
		Environment: v.cfg.Environment,
		Outcome:     res.Outcome,
		Permission:  req.Permission,
		IP:          req.IP,
		UserAgent:   req.UserAgent,
		Method:      req.Method,
		Path:        req.Path,
		Node:        v.cfg.Node,
		LatencyUS:   int64(v.since(now) / time.Microsecond),
	}
	if res.Entry != nil {
		ev.KeyID = res.Entry.ID()
	}
	v.cfg.Usage.Record(ev)
}

// ErrIPNotAllowed refuses a key used from an address outside its
// allowed_ips. It says no more: the list is the key owner's business.
var ErrIPNotAllowed = keyledger.Errorf(keyledger.Forbidden, "this API key may not be used from the request's source address")

// ErrNotReady is the refusal of every key while the table cannot be
// trusted.
var ErrNotReady = keyledger.Errorf(keyledger.Unavailable, "this node cannot vouch for its key table yet (catching up with the ledger, or cut off from it)")

// OutcomeError returns the error a refused outcome is reported as.
func OutcomeError(o keyledger.Outcome, permission string, retry time.Duration) error {
	switch o {
	case keyledger.OutcomeValid:
		return nil
	case keyledger.OutcomeForbidden:
		return keyledger.Errorf(keyledger.Forbidden, "API key lacks permission %q", permission)
	case keyledger.OutcomeIPNotAllowed:
		return ErrIPNotAllowed
	case keyledger.OutcomeRateLimited:
		return keyledger.Errorf(keyledger.RateLimited, "rate limit exceeded for this key; retry after %d s", RetrySeconds(retry))
	case keyledger.OutcomeQuotaExceeded:
		return &keyledger.Error{Code: keyledger.RateLimited, Reason: keyledger.ReasonQuotaExceeded,
			Message: fmt.Sprintf("the monthly quota of this key's plan is used up; it resets in %d s", RetrySeconds(retry))}
	case keyledger.OutcomeCreditsExhausted:
		return &keyledger.Error{Code: keyledger.RateLimited, Reason: keyledger.ReasonCreditsExhausted,
			Message: creditsMessage(retry)}
	case keyledger.OutcomeUnavailable:
		return ErrNotReady
	}
	return keyledger.ErrUnauthorized
}

func creditsMessage(retry time.Duration) string {
	if retry <= 0 {
		return "this key's credits are used up"
	}
	return fmt.Sprintf("this key's credits are used up; they refill in %d s", RetrySeconds(retry))
}

// RetrySeconds is d as the whole seconds of a Retry-After, at least 1.
func RetrySeconds(d time.Duration) int {
	s := int(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return s
}
