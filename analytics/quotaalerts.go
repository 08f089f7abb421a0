package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/quota"
	"github.com/nats-io/nats.go/jetstream"
)

// Quota alerts: the fleet's quota counters (nats.CountersBucket, one
// value per owner's monthly quota, key's credits and fleet-wide rate)
// are followed as they change, and a counter crossing a threshold raises
// an alert through the pipeline every finding takes (Raise: stored in
// ClickHouse, an incident opened, its notice published on ALERTS and
// delivered to the webhook):
//
//   - quota_80 (medium): an owner's quota counter has drawn at least
//     QuotaWarnPercent of its limit in the month;
//   - quota_100 (high): it has drawn all of it;
//   - credits_low (medium): a key's credits counter has at most
//     CreditsLowPercent of its limit left, or at most CreditsLowUnits,
//     whichever is larger (so a small balance warns with ten units to go,
//     a large one with a tenth of it).
//
// Rate counters raise nothing.
//
// A counter's figures are drawn units: what the nodes have taken from it
// as leases, which run ahead of the verifications passed by at most the
// units the nodes hold unspent. The details say so.
//
// Each rule fires once per counter and period (an owner's month, a key's
// credits period): the alerts table is the memory, so a restart or a
// second analytics node, which reads every counter's last value again,
// finds the alert already raised and raises nothing. Two nodes seeing the
// same crossing at once both raise it, as two detectors finding the same
// thing do: their rows, incident and notice collapse (same window bucket,
// same incident id, same Nats-Msg-Id on ALERTS).
const (
	// QuotaWarnPercent is quota_80's threshold, in percent of the limit
	// drawn.
	QuotaWarnPercent = 80
	// CreditsLowPercent and CreditsLowUnits are credits_low's threshold:
	// the units left, in percent of the limit, or in units, whichever is
	// larger.
	CreditsLowPercent = 10
	CreditsLowUnits   = 10
)

// quotaRetryEvery is how often a crossing that could not be checked or
// raised (ClickHouse down) is tried again, whether or not its counter
// changes meanwhile: a spent quota's counter does not.
const quotaRetryEvery = 15 * time.Second

// maxCounterPeriod bounds a counter's period: it is part of the alert's
// detail, which is how the alert is found again.
const maxCounterPeriod = 64

// kvOperation is the header a KV delete or purge carries.
const kvOperation = "KV-Operation"

// QuotaAlerts follows the quota counters and raises quota_80, quota_100
// and credits_low (see QuotaWarnPercent). OpenQuotaAlerts starts its
// goroutine; Close stops it.
type QuotaAlerts struct {
	js  jetstream.JetStream
	a   *Analytics
	log *slog.Logger

	// The goroutine's own state: per counter key, the period last seen
	// and the highest threshold raised in it; the crossings to try again.
	seen    map[string]*counterSeen
	pending map[string]quota.Value

	lastWarn time.Time

	cancel context.CancelFunc
	done   chan struct{}
}

type counterSeen struct {
	period string
	level  int // index+1 in the counter's ladder of the highest rule raised
}

// OpenQuotaAlerts starts following nats.CountersStream with an ordered
// consumer (the last value of every counter, then every change) on js,
// which needs the analytics role's permissions, and raises the alerts
// through a. While the stream does not exist (no admin node has created
// it yet) it keeps looking for it. ctx carries values only: the
// goroutine runs until Close, which must come before a's Close. log nil:
// a's logger.
func OpenQuotaAlerts(ctx context.Context, js jetstream.JetStream, a *Analytics, log *slog.Logger) (*QuotaAlerts, error) {
	if js == nil || a == nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "quota alerts need a JetStream and analytics")
	}
	if log == nil {
		log = a.log
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	q := &QuotaAlerts{js: js, a: a, log: log, seen: map[string]*counterSeen{}, pending: map[string]quota.Value{},
		cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(q.done)
		q.follow(runCtx)
	}()
	return q, nil
}

// Close stops following the counters and waits for the goroutine (an
// alert being raised finishes first: Raise is bounded to a few seconds),
// or for ctx to end. Calling it again is harmless.
func (q *QuotaAlerts) Close(ctx context.Context) error {
	q.cancel()
	select {
	case <-q.done:
		return nil
	case <-ctx.Done():
		return keyledger.Wrap(keyledger.Unavailable, ctx.Err(), "the quota alerts did not stop in time")
	}
}

// follow reads the counters for as long as it runs, recreating its
// consumer (from every counter's last value again) when it is lost.
func (q *QuotaAlerts) follow(ctx context.Context) {
	var logged time.Time
	waiting := false
	for wait := 100 * time.Millisecond; ctx.Err() == nil; wait = min(2*wait, 5*time.Second) {
		err := q.followOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			if !waiting {
				q.log.Info("analytics: waiting for the quota counters' stream (created by admin nodes)", "stream", nats.CountersStream)
				waiting = true
			}
		case time.Since(logged) >= time.Minute:
			q.log.Warn("analytics: following the quota counters failed; retrying", "stream", nats.CountersStream, "err", err)
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

func (q *QuotaAlerts) followOnce(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	cons, err := q.js.OrderedConsumer(cctx, nats.CountersStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"$KV." + nats.CountersBucket + ".>"},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	cancel()
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return err
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	q.log.Debug("analytics: following the quota counters", "stream", nats.CountersStream)
	lastRetry := time.Now()
	for {
		nctx, cancel := context.WithTimeout(ctx, quotaRetryEvery)
		msg, err := it.Next(jetstream.NextContext(nctx))
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		if msg != nil {
			q.handle(ctx, msg.Subject(), msg.Headers().Get(kvOperation), msg.Data())
		}
		if len(q.pending) > 0 && time.Since(lastRetry) >= quotaRetryEvery {
			q.retryPending(ctx)
			lastRetry = time.Now()
		}
	}
}

// handle checks one counter's new value.
func (q *QuotaAlerts) handle(ctx context.Context, subject, op string, data []byte) {
	key, err := nats.CounterOf(subject)
	if err != nil {
		q.log.Debug("analytics: skipping a counters' message", "subject", subject, "err", err)
		return
	}
	if op != "" {
		// Deleted or purged: a later value starts afresh (the
		// alerts table still knows what was raised).
		delete(q.seen, key)
		delete(q.pending, key)
		return
	}
	var v quota.Value
	if err := json.Unmarshal(data, &v); err != nil {
		q.log.Debug("analytics: skipping a counter that is not a quota value", "counter", key, "err", err)
		return
	}
	q.check(ctx, key, v)
}

func (q *QuotaAlerts) retryPending(ctx context.Context) {
	keys := make([]string, 0, len(q.pending))
	for k := range q.pending {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if ctx.Err() != nil {
			return
		}
		q.check(ctx, k, q.pending[k])
	}
}

// quotaLadder lists a kind's rules, lowest threshold first (nil: none).
func quotaLadder(k quota.Kind) []string {
	switch k {
	case quota.KindQuota:
		return []string{RuleQuota80, RuleQuota100}
	case quota.KindCredits:
		return []string{RuleCreditsLow}
	}
	return nil
}

// quotaLevel is how far up its ladder v is (0: below every threshold),
// and the drawn units at which that step is reached.
func quotaLevel(v quota.Value) (level int, at int64) {
	switch v.Kind {
	case quota.KindQuota:
		// used ≥ 80 % of limit: used ≥ ⌈0.8 × limit⌉ = limit − ⌊0.2 × limit⌋.
		warn := v.Limit - percentOf(v.Limit, 100-QuotaWarnPercent)
		switch {
		case v.Used >= v.Limit:
			return 2, v.Limit
		case v.Used >= warn:
			return 1, warn
		}
	case quota.KindCredits:
		low := max(percentOf(v.Limit, CreditsLowPercent), CreditsLowUnits)
		if v.Used > 0 && v.Limit-v.Used <= low {
			return 1, max(v.Limit-low, 0)
		}
	}
	return 0, 0
}

// quotaTarget is what a counter's alerts name: KeyID (the key, or the
// owner's ledger id for a quota) and Owner.
func quotaTarget(key string, v quota.Value) (keyID, owner string) {
	_, id, _ := strings.Cut(key, ".") // CounterKey: kind.id
	switch v.Kind {
	case quota.KindQuota:
		if v.Owner != "" {
			return keyledger.OwnerID(v.Owner), v.Owner
		}
		return id, ""
	default:
		if v.KeyID != "" {
			return v.KeyID, v.Owner
		}
		return id, v.Owner
	}
}

// quotaPeriodPhrase names the counter's period in the alert's detail
// ("of … drawn"); the phrase is how the alert is found again, so it is
// distinct for every period of the kind.
func quotaPeriodPhrase(v quota.Value) string {
	if v.Kind == quota.KindQuota {
		return "of plan month " + v.Period + " drawn"
	}
	rev, start, refill := strings.Cut(v.Period, "/")
	if refill {
		return "of the balance set at ledger revision " + rev + ", refill period from " + start + ", drawn"
	}
	return "of the balance set at ledger revision " + rev + " drawn"
}

// leaseNote ends every detail: what the figures count.
const leaseNote = "; drawn units run ahead of passed verifications by at most the leases the nodes hold"

// check raises the highest rule v has reached if it was not raised for
// the counter's period before.
func (q *QuotaAlerts) check(ctx context.Context, key string, v quota.Value) {
	delete(q.pending, key)
	ladder := quotaLadder(v.Kind)
	if ladder == nil {
		return // rate windows: no alerts
	}
	if v.Limit <= 0 || v.Used < 0 || v.Period == "" || len(v.Period) > maxCounterPeriod {
		q.log.Debug("analytics: skipping a counter without a usable limit or period", "counter", key,
			"limit", v.Limit, "used", v.Used, "period", clipStr(v.Period, maxCounterPeriod))
		return
	}
	if v.Kind == quota.KindQuota {
		if m, err := time.Parse("2006-01", v.Period); err == nil && !q.a.now().Before(m.AddDate(0, 1, 0)) {
			q.log.Debug("analytics: skipping the quota counter of a month that has ended", "counter", key, "period", v.Period)
			return
		}
	}
	s := q.seen[key]
	if s == nil || s.period != v.Period {
		s = &counterSeen{period: v.Period}
		q.seen[key] = s
	}
	level, at := quotaLevel(v)
	if level <= s.level {
		return
	}
	keyID, owner := quotaTarget(key, v)
	phrase := quotaPeriodPhrase(v)
	raised, err := q.raisedLevel(ctx, ladder, keyID, phrase)
	if err != nil {
		q.retryLater(key, v, err)
		return
	}
	if raised >= level {
		s.level = raised
		return
	}
	al := Alert{Rule: ladder[level-1], KeyID: clipStr(keyID, 64), Owner: owner, Observed: float64(v.Used), Baseline: float64(at)}
	switch al.Rule {
	case RuleQuota80:
		al.Detail = fmt.Sprintf("%s of %s verifications %s (%d %%)%s", grouped(v.Used), grouped(v.Limit), phrase, percent(v.Used, v.Limit), leaseNote)
	case RuleQuota100:
		al.Detail = fmt.Sprintf("%s of %s verifications %s (%d %%): once the nodes spend the leases they hold, the owner's metered verifications are refused until the month ends or the quota is raised%s",
			grouped(v.Used), grouped(v.Limit), phrase, percent(v.Used, v.Limit), leaseNote)
	case RuleCreditsLow:
		al.Detail = fmt.Sprintf("%s of %s credits %s, %s left%s", grouped(v.Used), grouped(v.Limit), phrase, grouped(max(v.Limit-v.Used, 0)), leaseNote)
	}
	if al.Owner == "" && v.Kind == quota.KindCredits {
		found := []Alert{al}
		if err := q.a.enrichOwners(ctx, found); err == nil {
			al.Owner = found[0].Owner
		}
	}
	q.a.Raise(al)
	// Raise logs its failures and tells nothing: the alert is raised
	// once its row is stored, which is what the next check looks for.
	raised, err = q.raisedLevel(ctx, ladder, keyID, phrase)
	if err == nil && raised < level {
		err = errors.New("the alert was not stored")
	}
	if err != nil {
		q.retryLater(key, v, err)
		return
	}
	s.level = level
}

func (q *QuotaAlerts) retryLater(key string, v quota.Value, err error) {
	q.pending[key] = v
	if time.Since(q.lastWarn) >= time.Minute {
		q.log.Warn("analytics: cannot check or raise a quota alert; retrying", "counter", key, "err", err)
		q.lastWarn = time.Now()
	}
}

// raisedLevel is the highest step of ladder already alerted for the
// counter's target and period (0: none).
func (q *QuotaAlerts) raisedLevel(ctx context.Context, ladder []string, keyID, phrase string) (int, error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	level := 0
	err := q.a.query(qctx, fmt.Sprintf(`SELECT DISTINCT rule FROM alerts WHERE rule IN (%s) AND key_id = %s AND position(detail, %s) > 0`,
		quoteList(ladder), quote(clipStr(keyID, 64)), quote(phrase)), func(scan func(...any) error) error {
		var r string
		if err := scan(&r); err != nil {
			return err
		}
		for i, l := range ladder {
			if l == r {
				level = max(level, i+1)
			}
		}
		return nil
	})
	return level, err
}

// percentOf is ⌊n × p / 100⌋ for n ≥ 0, without overflow.
func percentOf(n, p int64) int64 { return n/100*p + n%100*p/100 }

// percent is ⌊100 × used / limit⌋ (limit > 0).
func percent(used, limit int64) int64 {
	if used <= math.MaxInt64/100 {
		return used * 100 / limit
	}
	return int64(float64(used) / float64(limit) * 100)
}

// grouped writes n with thousands separators: 10,000.
func grouped(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
