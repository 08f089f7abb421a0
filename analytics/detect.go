package analytics

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
)

// The detector rules.
const (
	// RuleVolumeSpike: a key's verifications in the window far above its
	// own trailing average (Thresholds.SpikeFactor, SpikeMin, SpikeBaseline).
	RuleVolumeSpike = "volume_spike"
	// RuleNewSource: a key with history used from an IP it has not used in
	// the trailing Thresholds.SourceHistory.
	RuleNewSource = "new_source"
	// RuleRevokedKeyUsed: a revoked key presented (outcome revoked).
	RuleRevokedKeyUsed = "revoked_key_used"
	// RuleKeyGuessing: many unknown or malformed keys from one IP.
	RuleKeyGuessing = "key_guessing"
	// RuleEnvMismatch: a key presented to the other environment.
	RuleEnvMismatch = "env_mismatch"
	// RulePermissionProbing: many forbidden outcomes for one key.
	RulePermissionProbing = "permission_probing"
	// RuleDormantKey: the first use of a key after Thresholds.DormantAfter
	// of silence (since its last use, or its creation if never used).
	RuleDormantKey = "dormant_key"
	// RuleLedgerForgery: an event on KEYS that no trusted admin key signed,
	// or that sits on another key's subject. Raised by ingestion, not by
	// the periodic detector.
	RuleLedgerForgery = "ledger_forgery"
	// RuleLedgerReplaced: a node found the KEYS stream deleted, recreated
	// or cut, and refuses every verification.
	RuleLedgerReplaced = "ledger_replaced"
	// RuleLedgerDivergence: a node's copy of the ledger does not hash to
	// a signed checkpoint of the same size (a split view: two nodes shown
	// different histories), or lost an event. Raised by the node that
	// found it, or by admin nodes reading another node's dissent.
	RuleLedgerDivergence = "ledger_divergence"
	// RuleKeyLeaked: a scanner reported a key's secret found in public
	// (GitHub secret scanning, GitLab, an in-house scanner). Raised by the
	// leak report, not by the periodic detector.
	RuleKeyLeaked = "key_leaked"
	// RuleQuota80: an owner's monthly quota counter (quota.KindQuota) has
	// drawn at least QuotaWarnPercent (80 %) of its limit in the month.
	// RuleQuota100: it has drawn all of it; once the nodes spend the
	// leases they hold, the owner's metered verifications are refused
	// until the month ends or the quota is raised. RuleCreditsLow: a key's
	// credits counter (quota.KindCredits) has at most CreditsLowPercent
	// (10 %) of its limit left, or at most CreditsLowUnits (10), whichever
	// is larger. Raised by QuotaAlerts from the counters as they change,
	// not by the periodic detector, once per owner and month (the higher
	// of quota_80 and quota_100 reached: a counter that jumps past 100 %
	// raises quota_100 alone) or per key and credits period. Their figures
	// are drawn units, which run ahead of passed verifications by at most
	// the leases the nodes hold. A quota alert's KeyID is the owner's
	// ledger id (keyledger.OwnerID), so each owner has its own alerts and
	// incidents; Owner is the owner's name.
	RuleQuota80    = "quota_80"
	RuleQuota100   = "quota_100"
	RuleCreditsLow = "credits_low"
)

// Rules lists the detector rules.
func Rules() []string {
	return []string{RuleVolumeSpike, RuleNewSource, RuleRevokedKeyUsed, RuleKeyGuessing,
		RuleEnvMismatch, RulePermissionProbing, RuleDormantKey, RuleLedgerForgery, RuleLedgerReplaced, RuleLedgerDivergence, RuleKeyLeaked,
		RuleQuota80, RuleQuota100, RuleCreditsLow}
}

func knownRule(r string) bool {
	for _, k := range Rules() {
		if k == r {
			return true
		}
	}
	return false
}

// AlertSubjectPrefix + rule is the NATS subject alerts are published on
// (only the analytics role may publish there).
const AlertSubjectPrefix = nats.AlertSubjectPrefix

// RaiseAlert stores and publishes an alert found outside the periodic
// detector: a forged ledger event, a replaced stream. subject names where
// it was seen (stored in the alert's ip column's place: the key_id column
// holds the subject's key id when there is one). Failures are logged: the
// finder has already logged the finding itself.
func (a *Analytics) RaiseAlert(rule, subject, detail string) {
	a.raiseLedgerAlert(rule, subject, detail)
}

func (a *Analytics) raiseLedgerAlert(rule, subject, detail string) {
	a.Raise(Alert{Rule: rule, KeyID: clipStr(strings.TrimPrefix(subject, nats.KeysSubjectPrefix), 64), Detail: detail, Observed: 1})
}

// Raise stores and publishes one alert found outside the periodic
// detector (At is set to the clock): it opens or joins an incident like
// any finding. Failures are logged.
func (a *Analytics) Raise(al Alert) {
	now := a.cfg.Now().UTC().Truncate(time.Millisecond)
	rule := al.Rule
	al.At, al.Detail = now, clipStr(al.Detail, 500)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := detection{now: now}
	if err := a.storeAlerts(ctx, &d, []Alert{al}); err != nil {
		a.log.Error("analytics: cannot store alert", "rule", rule, "err", err)
	}
	a.metrics.alerts.WithLabelValues(rule).Inc()
	a.log.Warn("analytics: alert", "rule", rule, "key_id", al.KeyID, "detail", al.Detail)
	// Found outside a detection run: the detector's lock keeps the two
	// from folding findings into the same incidents at once.
	a.detectMu.Lock()
	defer a.detectMu.Unlock()
	notices, err := a.track(ctx, &detection{now: now}, []Alert{al}, []Alert{al})
	if err != nil {
		a.log.Error("analytics: cannot track alert", "rule", rule, "err", err)
		return
	}
	a.publishNotices(ctx, notices)
}

// Alert is one detector finding: what was seen (Observed, Detail), what is
// normal (Baseline: the key's usual figure, or the rule's threshold for
// rules without history), which key, owner and IP, and when (the end of
// the window).
type Alert struct {
	Rule     string    `json:"rule"`
	KeyID    string    `json:"key_id"`
	Owner    string    `json:"owner"`
	IP       string    `json:"ip"`
	At       time.Time `json:"at"`
	Detail   string    `json:"detail"`
	Observed float64   `json:"observed"`
	Baseline float64   `json:"baseline"`
}

// detection holds one run's parameters.
type detection struct {
	now, start time.Time
	win        string // SQL condition: the event is in [start, now)
	before     string // SQL condition: the event is in [start's minute, start)
	winKeys    string // SQL subquery: keys used in the window
	startMin   int64  // start truncated to the minute (unix)
}

// Detect runs every rule over the window ending at now (event time),
// stores and publishes the alerts not already raised for the same rule and
// key/IP within the window, and returns them. Start calls it every
// DetectInterval with the clock; tests and replays call it with any now.
func (a *Analytics) Detect(ctx context.Context, now time.Time) ([]Alert, error) {
	a.detectMu.Lock()
	defer a.detectMu.Unlock()
	now = now.UTC().Truncate(time.Millisecond)
	w := a.cfg.Window
	d := detection{now: now, start: now.Add(-w)}
	d.startMin = d.start.Truncate(time.Minute).Unix()
	d.win = msRange(d.start, now)
	d.before = msRange(time.Unix(d.startMin, 0), d.start)
	d.winKeys = fmt.Sprintf("(SELECT key_id FROM usage_events WHERE %s AND key_id != '')", d.win)

	var found []Alert
	for _, rule := range []func(context.Context, *detection) ([]Alert, error){
		a.volumeSpike, a.newSource, a.revokedKeyUsed, a.keyGuessing, a.envMismatch, a.permissionProbing, a.dormantKey,
	} {
		al, err := rule(ctx, &d)
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "detection query failed")
		}
		found = append(found, al...)
	}
	var fresh []Alert
	if len(found) > 0 {
		if err := a.enrichOwners(ctx, found); err != nil {
			return nil, err
		}
		var err error
		if fresh, err = a.dedupAlerts(ctx, &d, found); err != nil {
			return nil, err
		}
	}
	if len(fresh) > 0 {
		if err := a.storeAlerts(ctx, &d, fresh); err != nil {
			return nil, err
		}
		for _, al := range fresh {
			a.metrics.alerts.WithLabelValues(al.Rule).Inc()
			a.log.Info("analytics: finding", "rule", al.Rule, "key_id", al.KeyID, "owner", al.Owner, "ip", al.IP, "detail", al.Detail)
		}
	}
	// Every run, findings or not: incidents open, grow and resolve.
	notices, err := a.track(ctx, &d, found, fresh)
	if err != nil {
		return nil, err
	}
	a.publishNotices(ctx, notices)
	return fresh, nil
}

// query runs q and calls scan for each row.
func (a *Analytics) query(ctx context.Context, q string, scan func(func(...any) error) error) error {
	rows, err := a.conn.Query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows.Scan); err != nil {
			return err
		}
	}
	return rows.Err()
}

func (a *Analytics) volumeSpike(ctx context.Context, d *detection) ([]Alert, error) {
	t := a.cfg.Thresholds
	w := a.cfg.Window
	bstart := time.Unix(d.startMin, 0).Add(-t.SpikeBaseline).Unix()
	q := fmt.Sprintf(`SELECT key_id, observed, total, first FROM (
		SELECT key_id, toUInt64(uniqExact(event_id)) AS observed FROM usage_events
		WHERE %s AND key_id != '' GROUP BY key_id HAVING observed >= %d
	) ANY LEFT JOIN (
		SELECT key_id, toUInt64(sum(count)) AS total, toUInt64(min(minute)) AS first FROM usage_minute
		WHERE minute >= toDateTime(%d) AND minute < toDateTime(%d) AND key_id IN %s GROUP BY key_id
	) USING key_id`, d.win, t.SpikeMin, bstart, d.startMin, d.winKeys)
	var out []Alert
	err := a.query(ctx, q, func(scan func(...any) error) error {
		var key string
		var observed, total, first uint64
		if err := scan(&key, &observed, &total, &first); err != nil {
			return err
		}
		if total == 0 {
			return nil // no history to compare with
		}
		span := time.Duration(d.startMin-int64(first)) * time.Second
		span = max(span, w)
		baseline := float64(total) * float64(w) / float64(span)
		if float64(observed) < t.SpikeFactor*baseline {
			return nil
		}
		out = append(out, Alert{Rule: RuleVolumeSpike, KeyID: key, Observed: float64(observed), Baseline: baseline,
			Detail: fmt.Sprintf("%d verifications in %s, %.1f× the key's average of %.2f per %s over the previous %s",
				observed, w, float64(observed)/max(baseline, 1e-9), baseline, w, span.Round(time.Minute))})
		return nil
	})
	return out, err
}

func (a *Analytics) newSource(ctx context.Context, d *detection) ([]Alert, error) {
	t := a.cfg.Thresholds
	h1 := d.start.Truncate(time.Hour).Unix()
	h0 := d.start.Add(-t.SourceHistory).Truncate(time.Hour).Unix()
	hist := func(cols string) string {
		return fmt.Sprintf(`SELECT %[1]s FROM usage_key_ip_hour WHERE hour >= toDateTime(%[2]d) AND hour < toDateTime(%[3]d) AND key_id IN %[4]s
			UNION ALL SELECT %[1]s FROM usage_events WHERE ts >= toDateTime(%[3]d) AND %[5]s AND key_id IN %[4]s`,
			cols, h0, h1, d.winKeys, msRange(time.Unix(h1, 0), d.start))
	}
	q := fmt.Sprintf(`SELECT key_id, ip, toUInt64(uniqExact(event_id)) AS observed FROM usage_events
		WHERE %s AND key_id != '' AND ip != ''
		AND key_id IN (%s)
		AND (key_id, ip) NOT IN (%s)
		GROUP BY key_id, ip`, d.win, hist("key_id"), hist("key_id, ip"))
	var out []Alert
	err := a.query(ctx, q, func(scan func(...any) error) error {
		var al Alert
		var observed uint64
		if err := scan(&al.KeyID, &al.IP, &observed); err != nil {
			return err
		}
		al.Rule, al.Observed = RuleNewSource, float64(observed)
		out = append(out, al)
		return nil
	})
	if err != nil || len(out) == 0 {
		return out, err
	}
	known := map[string]uint64{}
	err = a.query(ctx, fmt.Sprintf(`SELECT key_id, toUInt64(uniqExact(ip)) FROM (%s) WHERE key_id IN (%s) GROUP BY key_id`,
		hist("key_id, ip"), quoteList(alertKeys(out))), func(scan func(...any) error) error {
		var k string
		var n uint64
		if err := scan(&k, &n); err != nil {
			return err
		}
		known[k] = n
		return nil
	})
	for i := range out {
		al := &out[i]
		al.Baseline = float64(known[al.KeyID])
		al.Detail = fmt.Sprintf("%d verifications from %s, an IP this key has not used in the previous %s (it used %d other IPs)",
			int(al.Observed), al.IP, t.SourceHistory, known[al.KeyID])
	}
	return out, err
}

// outcomeRule alerts per key and IP on events of one outcome in the window.
func (a *Analytics) outcomeRule(ctx context.Context, d *detection, rule, outcome string, min uint64, what string) ([]Alert, error) {
	q := fmt.Sprintf(`SELECT key_id, ip, toUInt64(uniqExact(event_id)) AS observed FROM usage_events
		WHERE %s AND outcome = %s GROUP BY key_id, ip HAVING observed >= %d`, d.win, quote(outcome), min)
	var out []Alert
	err := a.query(ctx, q, func(scan func(...any) error) error {
		var al Alert
		var observed uint64
		if err := scan(&al.KeyID, &al.IP, &observed); err != nil {
			return err
		}
		al.Rule, al.Observed, al.Baseline = rule, float64(observed), float64(min)
		al.Detail = fmt.Sprintf("%d %s from %s in %s", observed, what, al.IP, a.cfg.Window)
		out = append(out, al)
		return nil
	})
	return out, err
}

func (a *Analytics) revokedKeyUsed(ctx context.Context, d *detection) ([]Alert, error) {
	return a.outcomeRule(ctx, d, RuleRevokedKeyUsed, keyledger.OutcomeRevoked.String(), a.cfg.Thresholds.RevokedMin,
		"verifications of this revoked key")
}

func (a *Analytics) envMismatch(ctx context.Context, d *detection) ([]Alert, error) {
	return a.outcomeRule(ctx, d, RuleEnvMismatch, keyledger.OutcomeEnvMismatch.String(), a.cfg.Thresholds.EnvMismatchMin,
		"presentations of this key to the other environment")
}

func (a *Analytics) keyGuessing(ctx context.Context, d *detection) ([]Alert, error) {
	min := a.cfg.Thresholds.GuessingMin
	q := fmt.Sprintf(`SELECT ip, toUInt64(uniqExact(event_id)) AS observed, toUInt64(countIf(outcome = 'unknown')) AS unknown
		FROM usage_events WHERE %s AND outcome IN ('unknown', 'malformed') GROUP BY ip HAVING observed >= %d`, d.win, min)
	var out []Alert
	err := a.query(ctx, q, func(scan func(...any) error) error {
		var al Alert
		var observed, unknown uint64
		if err := scan(&al.IP, &observed, &unknown); err != nil {
			return err
		}
		al.Rule, al.Observed, al.Baseline = RuleKeyGuessing, float64(observed), float64(min)
		al.Detail = fmt.Sprintf("%d unknown or malformed keys presented from %s in %s (threshold %d)", observed, al.IP, a.cfg.Window, min)
		out = append(out, al)
		return nil
	})
	return out, err
}

func (a *Analytics) permissionProbing(ctx context.Context, d *detection) ([]Alert, error) {
	min := a.cfg.Thresholds.ForbiddenMin
	q := fmt.Sprintf(`SELECT key_id, arrayElement(topK(1)(ip), 1) AS ip, toUInt64(uniqExact(event_id)) AS observed,
		toUInt64(uniqExact(permission)) AS perms
		FROM usage_events WHERE %s AND outcome = 'forbidden' AND key_id != '' GROUP BY key_id HAVING observed >= %d`, d.win, min)
	var out []Alert
	err := a.query(ctx, q, func(scan func(...any) error) error {
		var al Alert
		var observed, perms uint64
		if err := scan(&al.KeyID, &al.IP, &observed, &perms); err != nil {
			return err
		}
		al.Rule, al.Observed, al.Baseline = RulePermissionProbing, float64(observed), float64(min)
		al.Detail = fmt.Sprintf("%d verifications refused for missing permissions (%d distinct permissions) in %s, mostly from %s (threshold %d)",
			observed, perms, a.cfg.Window, al.IP, min)
		out = append(out, al)
		return nil
	})
	return out, err
}

func (a *Analytics) dormantKey(ctx context.Context, d *detection) ([]Alert, error) {
	t := a.cfg.Thresholds
	cut := d.start.Add(-t.DormantAfter).Truncate(time.Minute).Unix()
	// Keys used in the window but not in the DormantAfter before it.
	q := fmt.Sprintf(`SELECT key_id, toUInt64(uniqExact(event_id)), arrayElement(topK(1)(ip), 1) FROM usage_events
		WHERE %s AND key_id != '' AND key_id NOT IN (
			SELECT key_id FROM usage_minute WHERE minute >= toDateTime(%d) AND minute < toDateTime(%d) AND key_id IN %s
			UNION ALL SELECT key_id FROM usage_events WHERE %s)
		GROUP BY key_id`, d.win, cut, d.startMin, d.winKeys, d.before)
	type cand struct {
		observed uint64
		ip       string
	}
	cands := map[string]cand{}
	err := a.query(ctx, q, func(scan func(...any) error) error {
		var k, ip string
		var n uint64
		if err := scan(&k, &n, &ip); err != nil {
			return err
		}
		cands[k] = cand{n, ip}
		return nil
	})
	if err != nil || len(cands) == 0 {
		return nil, err
	}
	keys := make([]string, 0, len(cands))
	for k := range cands {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	in := quoteList(keys)
	last, err := a.keyTimes(ctx, fmt.Sprintf(`SELECT key_id, toUInt64(max(minute)) FROM usage_minute
		WHERE key_id IN (%s) AND minute < toDateTime(%d) GROUP BY key_id`, in, cut))
	if err != nil {
		return nil, err
	}
	created, err := a.keyTimes(ctx, fmt.Sprintf(`SELECT key_id, toUInt64(min(ts)) FROM key_events
		WHERE type = 'KeyCreated' AND key_id IN (%s) GROUP BY key_id`, in))
	if err != nil {
		return nil, err
	}
	var out []Alert
	for _, k := range keys {
		var since int64
		var what string
		if l, ok := last[k]; ok {
			since, what = l, "its last use"
		} else if c, ok := created[k]; ok {
			since, what = c, "its creation, never used since"
		} else {
			continue // neither history nor creation known: nothing to compare
		}
		silence := d.start.Sub(time.Unix(since, 0))
		if silence < t.DormantAfter {
			continue
		}
		days := silence.Hours() / 24
		out = append(out, Alert{Rule: RuleDormantKey, KeyID: k, IP: cands[k].ip, Observed: days,
			Baseline: t.DormantAfter.Hours() / 24,
			Detail: fmt.Sprintf("%d verifications after %.0f days of silence (since %s at %s)", cands[k].observed, days,
				what, time.Unix(since, 0).UTC().Format(time.RFC3339))})
	}
	return out, nil
}

func alertKeys(al []Alert) []string {
	seen := map[string]bool{}
	var keys []string
	for _, a := range al {
		if !seen[a.KeyID] {
			seen[a.KeyID] = true
			keys = append(keys, a.KeyID)
		}
	}
	return keys
}

func quoteList(ss []string) string {
	if len(ss) == 0 {
		return "''"
	}
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = quote(s)
	}
	return strings.Join(q, ",")
}

type alertKey struct{ rule, key, ip string }

// dedupAlerts drops findings already alerted for the same rule and key/IP
// within the window before now.
func (a *Analytics) dedupAlerts(ctx context.Context, d *detection, found []Alert) ([]Alert, error) {
	raised := map[alertKey]bool{}
	err := a.query(ctx, fmt.Sprintf(`SELECT rule, key_id, ip FROM alerts WHERE ts > toDateTime(%d) AND ts <= toDateTime(%d)`,
		clampSec(d.start), clampSec(d.now)), func(scan func(...any) error) error {
		var k alertKey
		if err := scan(&k.rule, &k.key, &k.ip); err != nil {
			return err
		}
		raised[k] = true
		return nil
	})
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read recent alerts")
	}
	var fresh []Alert
	for _, al := range found {
		k := alertKey{al.Rule, al.KeyID, al.IP}
		if raised[k] {
			continue
		}
		raised[k] = true
		al.At = d.now
		fresh = append(fresh, al)
	}
	return fresh, nil
}

// enrichOwners fills the owners of the alerts' keys.
func (a *Analytics) enrichOwners(ctx context.Context, al []Alert) error {
	keys := alertKeys(al)
	owners := map[string]string{}
	err := a.query(ctx, fmt.Sprintf(`SELECT key_id, any(owner) FROM key_events WHERE type = 'KeyCreated' AND key_id IN (%s) GROUP BY key_id`,
		quoteList(keys)), func(scan func(...any) error) error {
		var k, o string
		if err := scan(&k, &o); err != nil {
			return err
		}
		owners[k] = o
		return nil
	})
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot look up key owners")
	}
	for i := range al {
		al[i].Owner = owners[al[i].KeyID]
	}
	return nil
}

const alertColumns = "bucket, rule, key_id, ip, owner, ts, ms, detail, observed, baseline"

func (a *Analytics) storeAlerts(ctx context.Context, d *detection, al []Alert) error {
	// Two nodes detecting the same thing in the same window bucket write
	// rows with the same sorting key, which collapse.
	bucket := d.now.Truncate(a.cfg.Window)
	b, err := a.conn.PrepareBatch(ctx, "INSERT INTO alerts ("+alertColumns+")")
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot store alerts")
	}
	defer b.Close()
	for _, x := range al {
		if err := b.Append(bucket, x.Rule, x.KeyID, x.IP, x.Owner, x.At.Truncate(time.Second), uint16(x.At.Nanosecond()/1e6),
			x.Detail, x.Observed, x.Baseline); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot store alerts")
		}
	}
	if err := b.Send(); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot store alerts")
	}
	return nil
}

// keyTimes runs a query of (key_id, unix seconds) rows into a map.
func (a *Analytics) keyTimes(ctx context.Context, sql string) (map[string]int64, error) {
	out := map[string]int64{}
	err := a.query(ctx, sql, func(scan func(...any) error) error {
		var k string
		var t uint64
		if err := scan(&k, &t); err != nil {
			return err
		}
		out[k] = int64(t)
		return nil
	})
	return out, err
}
