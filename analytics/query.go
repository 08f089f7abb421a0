package analytics

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

// Interval is the width of a usage bucket.
type Interval string

// The intervals of /v1/usage.
const (
	Minute Interval = "minute"
	Hour   Interval = "hour"
	Day    Interval = "day"
)

// ParseInterval parses "minute", "hour" or "day"; "" is Hour.
func ParseInterval(s string) (Interval, error) {
	switch Interval(s) {
	case Minute, Hour, Day:
		return Interval(s), nil
	case "":
		return Hour, nil
	}
	return "", keyledger.Errorf(keyledger.Invalid, "interval must be minute, hour or day, not %q", s)
}

func (i Interval) duration() time.Duration {
	switch i {
	case Minute:
		return time.Minute
	case Day:
		return 24 * time.Hour
	}
	return time.Hour
}

// sqlFunc is the ClickHouse function that truncates a DateTime to i.
func (i Interval) sqlFunc() string {
	switch i {
	case Minute:
		return "toStartOfMinute"
	case Day:
		return "toStartOfDay"
	}
	return "toStartOfHour"
}

// MaxPoints bounds the buckets one usage query may ask for.
const MaxPoints = 10_000

// MaxLimit bounds the rows of one audit or alerts query; DefaultLimit is
// used when none is given.
const (
	MaxLimit     = 10_000
	DefaultLimit = 1000
)

// UsageQuery selects usage: one key (KeyID), all keys of an owner (Owner)
// or all keys of the ledger (All), exactly one of them, over [From, To), in
// buckets of Interval. Zero From/To default to the last 24 hours by the
// clock.
type UsageQuery struct {
	KeyID string
	Owner string
	// All selects all keys of the ledger, for a fleet-wide dashboard
	// (verifications that named no key are not counted). The HTTP API
	// never sets it.
	All      bool
	From, To time.Time
	Interval Interval
}

// UsagePoint is the number of verifications with one outcome in the bucket
// starting at Time.
type UsagePoint struct {
	Time    time.Time `json:"time"`
	Outcome string    `json:"outcome"`
	Count   uint64    `json:"count"`
}

// UsageResult is the body of GET /v1/usage.
type UsageResult struct {
	Points []UsagePoint `json:"points"`
}

// Quota is the body of GET /v1/quota: the valid verifications in Month
// (YYYY-MM, UTC) of Owner's live keys. Test keys consume no quota.
type Quota struct {
	Owner string `json:"owner"`
	Month string `json:"month"`
	Used  uint64 `json:"used"`
}

// AuditQuery selects key lifecycle events; empty fields match everything.
// Type is a lifecycle event type (see ParseEventType).
type AuditQuery struct {
	KeyID    string
	Actor    string
	Type     string
	From, To time.Time
	Limit    int
}

// AuditEvent is one key lifecycle event: who did what to which key, when
// and why. Name, Owner, Environment, Permissions and ExpiresAt are set for
// KeyCreated.
type AuditEvent struct {
	Type        string     `json:"type"`
	EventID     string     `json:"event_id"`
	KeyID       string     `json:"key_id"`
	Actor       string     `json:"actor"`
	ActorIP     string     `json:"actor_ip,omitempty"`
	At          time.Time  `json:"at"`
	Reason      string     `json:"reason"`
	Name        string     `json:"name,omitempty"`
	Owner       string     `json:"owner,omitempty"`
	Environment string     `json:"environment,omitempty"`
	Permissions []string   `json:"permissions,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	// Changed names the fields a KeyUpdated changed.
	Changed []string `json:"changed,omitempty"`
}

// AuditResult is the body of GET /v1/audit.
type AuditResult struct {
	Events []AuditEvent `json:"events"`
}

// AlertQuery selects alerts; empty fields match everything.
type AlertQuery struct {
	From, To time.Time
	Rule     string
	KeyID    string
	Limit    int
}

// AlertResult is the body of GET /v1/alerts.
type AlertResult struct {
	Alerts []Alert `json:"alerts"`
}

// KeyUse summarizes a key's recent valid verifications.
type KeyUse struct {
	// LastUsedAt is the time of the last valid verification (zero: none).
	LastUsedAt time.Time
	// Uses30d counts valid verifications in the 30 days before the clock.
	Uses30d uint64
}

func (q *UsageQuery) normalize(now time.Time) error {
	n := 0
	for _, set := range []bool{q.KeyID != "", q.Owner != "", q.All} {
		if set {
			n++
		}
	}
	if n != 1 {
		if q.All {
			return keyledger.Errorf(keyledger.Invalid, "give exactly one of key_id, owner and all")
		}
		return keyledger.Errorf(keyledger.Invalid, "give exactly one of key_id and owner")
	}
	if q.KeyID != "" {
		if err := events.ValidKeyID(q.KeyID); err != nil {
			return err
		}
	}
	iv, err := ParseInterval(string(q.Interval))
	if err != nil {
		return err
	}
	q.Interval = iv
	if err := defaultRange(&q.From, &q.To, now, 24*time.Hour); err != nil {
		return err
	}
	if n := q.To.Sub(q.From) / iv.duration(); n > MaxPoints {
		return keyledger.Errorf(keyledger.Invalid, "range holds %d %s buckets, more than %d: use a larger interval or a shorter range", n, iv, MaxPoints)
	}
	return nil
}

// defaultRange fills a missing to with now and a missing from with
// to - span, and checks from <= to and the storable range.
func defaultRange(from, to *time.Time, now time.Time, span time.Duration) error {
	if to.IsZero() {
		*to = now
	}
	if from.IsZero() {
		*from = to.Add(-span)
	}
	*from, *to = from.UTC(), to.UTC()
	if from.After(*to) {
		return keyledger.Errorf(keyledger.Invalid, "from (%s) is after to (%s)", from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	return nil
}

// clampSec returns t as unix seconds within what DateTime holds.
func clampSec(t time.Time) int64 {
	return min(max(t.Unix(), minSec), maxSec)
}

// Usage returns the number of verifications per bucket and outcome, from
// the events' own timestamps. Whole minutes come from the per-minute
// rollup and partial minutes at the edges from the raw rows, so counts are
// exact for any range.
func (a *Analytics) Usage(ctx context.Context, q UsageQuery) ([]UsagePoint, error) {
	if err := q.normalize(a.now()); err != nil {
		return nil, err
	}
	var keyCond string
	switch {
	case q.All:
		keyCond = "key_id != ''"
	case q.KeyID != "":
		keyCond = "key_id = " + quote(q.KeyID)
	default:
		keyCond = "key_id IN (SELECT key_id FROM key_events WHERE type = 'KeyCreated' AND owner = " + quote(q.Owner) + ")"
	}
	type bk struct {
		t       int64
		outcome string
	}
	counts := map[bk]uint64{}
	from, to := q.From, q.To
	fromMin := from.Truncate(time.Minute)
	if fromMin.Before(from) {
		fromMin = fromMin.Add(time.Minute)
	}
	toMin := to.Truncate(time.Minute)
	collect := func(query string) error {
		rows, err := a.conn.Query(ctx, query)
		if err != nil {
			return keyledger.Wrap(keyledger.Unavailable, err, "cannot query usage")
		}
		defer rows.Close()
		for rows.Next() {
			var t time.Time
			var o string
			var c uint64
			if err := rows.Scan(&t, &o, &c); err != nil {
				return keyledger.Wrap(keyledger.Internal, err, "cannot read usage")
			}
			counts[bk{t.Unix(), o}] += c
		}
		if err := rows.Err(); err != nil {
			return keyledger.Wrap(keyledger.Unavailable, err, "cannot read usage")
		}
		return nil
	}
	f := q.Interval.sqlFunc()
	raw := func(lo, hi time.Time) error {
		if !lo.Before(hi) {
			return nil
		}
		return collect(fmt.Sprintf(`SELECT %s(ts) AS t, outcome, uniqExact(event_id) AS c FROM usage_events
			WHERE %s AND %s GROUP BY t, outcome`, f, keyCond, msRange(lo, hi)))
	}
	if fromMin.Before(toMin) {
		if err := collect(fmt.Sprintf(`SELECT %s(minute) AS t, outcome, sum(count) AS c FROM usage_minute
			WHERE %s AND minute >= toDateTime(%d) AND minute < toDateTime(%d) GROUP BY t, outcome`,
			f, keyCond, clampSec(fromMin), clampSec(toMin))); err != nil {
			return nil, err
		}
		if err := raw(from, fromMin); err != nil {
			return nil, err
		}
		if err := raw(toMin, to); err != nil {
			return nil, err
		}
	} else if err := raw(from, to); err != nil {
		return nil, err
	}
	points := make([]UsagePoint, 0, len(counts))
	for k, c := range counts {
		if c > 0 {
			points = append(points, UsagePoint{Time: time.Unix(k.t, 0).UTC(), Outcome: k.outcome, Count: c})
		}
	}
	sort.Slice(points, func(i, j int) bool {
		if !points[i].Time.Equal(points[j].Time) {
			return points[i].Time.Before(points[j].Time)
		}
		return points[i].Outcome < points[j].Outcome
	})
	return points, nil
}

// msRange is the SQL condition "lo <= (ts, ms) < hi" at millisecond
// precision.
func msRange(lo, hi time.Time) string {
	l, h := lo.UnixMilli(), hi.UnixMilli()
	return fmt.Sprintf(`ts >= toDateTime(%d) AND ts <= toDateTime(%d) AND (toUInt64(ts) * 1000 + ms) >= %d AND (toUInt64(ts) * 1000 + ms) < %d`,
		clampSec(lo), clampSec(hi), max(l, 0), max(h, 0))
}

// ParseMonth parses YYYY-MM and returns the month's first instant (UTC).
func ParseMonth(s string) (time.Time, error) {
	t, err := time.Parse("2006-01", s)
	if err != nil {
		return time.Time{}, keyledger.Errorf(keyledger.Invalid, "month must be YYYY-MM, not %q", s)
	}
	return t.UTC(), nil
}

// Quota returns the valid verifications of owner's live keys in month
// (YYYY-MM, UTC; "" is the clock's month).
func (a *Analytics) Quota(ctx context.Context, owner, month string) (Quota, error) {
	if owner == "" {
		return Quota{}, keyledger.Errorf(keyledger.Invalid, "owner is required")
	}
	if month == "" {
		month = a.now().UTC().Format("2006-01")
	}
	start, err := ParseMonth(month)
	if err != nil {
		return Quota{}, err
	}
	end := start.AddDate(0, 1, 0)
	var used uint64
	err = a.conn.QueryRow(ctx, fmt.Sprintf(`SELECT toUInt64(sum(count)) FROM usage_minute
		WHERE outcome = 'valid' AND minute >= toDateTime(%d) AND minute < toDateTime(%d)
		AND key_id IN (SELECT key_id FROM key_events WHERE type = 'KeyCreated' AND environment = 'live' AND owner = %s)`,
		clampSec(start), clampSec(end), quote(owner))).Scan(&used)
	if err != nil {
		return Quota{}, keyledger.Wrap(keyledger.Unavailable, err, "cannot query quota")
	}
	return Quota{Owner: owner, Month: month, Used: used}, nil
}

// ParseEventType accepts an event type (KeyCreated, …) or its short form
// (created, revoked, rolled, updated, disabled, enabled).
func ParseEventType(s string) (string, error) {
	switch strings.ToLower(s) {
	case "":
		return "", nil
	case "keycreated", "created":
		return string(events.TypeKeyCreated), nil
	case "keyrevoked", "revoked":
		return string(events.TypeKeyRevoked), nil
	case "keyrolled", "rolled":
		return string(events.TypeKeyRolled), nil
	case "keyupdated", "updated":
		return string(events.TypeKeyUpdated), nil
	case "keydisabled", "disabled":
		return string(events.TypeKeyDisabled), nil
	case "keyenabled", "enabled":
		return string(events.TypeKeyEnabled), nil
	case "keyleakreported", "leaked", "leak_reported":
		return string(events.TypeKeyLeakReported), nil
	case "planset", "plan":
		return string(events.TypePlanSet), nil
	case "ownerset", "owner":
		return string(events.TypeOwnerSet), nil
	}
	return "", keyledger.Errorf(keyledger.Invalid, "type must be KeyCreated, KeyRolled, KeyRevoked, KeyUpdated, KeyDisabled, KeyEnabled, KeyLeakReported, PlanSet or OwnerSet, not %s", keyledger.Quote(s))
}

func checkLimit(n int) (int, error) {
	switch {
	case n == 0:
		return DefaultLimit, nil
	case n < 0 || n > MaxLimit:
		return 0, keyledger.Errorf(keyledger.Invalid, "limit must be between 1 and %d", MaxLimit)
	}
	return n, nil
}

// Audit returns key lifecycle events in time order.
func (a *Analytics) Audit(ctx context.Context, q AuditQuery) ([]AuditEvent, error) {
	typ, err := ParseEventType(q.Type)
	if err != nil {
		return nil, err
	}
	limit, err := checkLimit(q.Limit)
	if err != nil {
		return nil, err
	}
	conds := []string{"1"}
	if q.KeyID != "" {
		conds = append(conds, "key_id = "+quote(q.KeyID))
	}
	if q.Actor != "" {
		conds = append(conds, "actor = "+quote(q.Actor))
	}
	if typ != "" {
		conds = append(conds, "type = "+quote(typ))
	}
	if c, err := optRange(q.From, q.To); err != nil {
		return nil, err
	} else if c != "" {
		conds = append(conds, c)
	}
	rows, err := a.conn.Query(ctx, fmt.Sprintf(`SELECT type, toString(event_id), key_id, actor, toUInt64(ts), ms, reason,
		name, owner, environment, permissions, expires_at_ms, actor_ip, changed
		FROM key_events FINAL WHERE %s ORDER BY ts, ms, event_id LIMIT %d`, strings.Join(conds, " AND "), limit))
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot query the audit trail")
	}
	defer rows.Close()
	out := []AuditEvent{}
	for rows.Next() {
		var e AuditEvent
		var sec, expires uint64
		var ms uint16
		if err := rows.Scan(&e.Type, &e.EventID, &e.KeyID, &e.Actor, &sec, &ms, &e.Reason,
			&e.Name, &e.Owner, &e.Environment, &e.Permissions, &expires, &e.ActorIP, &e.Changed); err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "cannot read the audit trail")
		}
		e.At = time.UnixMilli(int64(sec)*1000 + int64(ms)).UTC()
		if expires > 0 {
			t := time.UnixMilli(int64(expires)).UTC()
			e.ExpiresAt = &t
		}
		if e.Type != string(events.TypeKeyCreated) && !slices.Contains(e.Changed, events.FieldPermissions) {
			e.Permissions = nil
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the audit trail")
	}
	return out, nil
}

// optRange is the millisecond condition for optional from/to ("" if
// neither is set).
func optRange(from, to time.Time) (string, error) {
	if from.IsZero() && to.IsZero() {
		return "", nil
	}
	if !from.IsZero() && !to.IsZero() && from.After(to) {
		return "", keyledger.Errorf(keyledger.Invalid, "from (%s) is after to (%s)", from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	if to.IsZero() {
		to = time.Unix(maxSec, 0)
	}
	if from.IsZero() {
		from = time.Unix(0, 0)
	}
	return msRange(from, to), nil
}

// Alerts returns stored alerts in time order.
func (a *Analytics) Alerts(ctx context.Context, q AlertQuery) ([]Alert, error) {
	if q.Rule != "" && !knownRule(q.Rule) {
		return nil, keyledger.Errorf(keyledger.Invalid, "rule must be one of %s, not %q", strings.Join(Rules(), ", "), q.Rule)
	}
	limit, err := checkLimit(q.Limit)
	if err != nil {
		return nil, err
	}
	conds := []string{"1"}
	if q.Rule != "" {
		conds = append(conds, "rule = "+quote(q.Rule))
	}
	if q.KeyID != "" {
		conds = append(conds, "key_id = "+quote(q.KeyID))
	}
	if c, err := optRange(q.From, q.To); err != nil {
		return nil, err
	} else if c != "" {
		conds = append(conds, c)
	}
	rows, err := a.conn.Query(ctx, fmt.Sprintf(`SELECT rule, key_id, owner, ip, toUInt64(ts), ms, detail, observed, baseline
		FROM alerts FINAL WHERE %s ORDER BY ts, ms, rule, key_id, ip LIMIT %d`, strings.Join(conds, " AND "), limit))
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot query alerts")
	}
	return scanAlerts(rows)
}

func scanAlerts(rows driver.Rows) ([]Alert, error) {
	defer rows.Close()
	out := []Alert{}
	for rows.Next() {
		var al Alert
		var sec uint64
		var ms uint16
		if err := rows.Scan(&al.Rule, &al.KeyID, &al.Owner, &al.IP, &sec, &ms, &al.Detail, &al.Observed, &al.Baseline); err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "cannot read alerts")
		}
		al.At = time.UnixMilli(int64(sec)*1000 + int64(ms)).UTC()
		out = append(out, al)
	}
	if err := rows.Err(); err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read alerts")
	}
	return out, nil
}

// LastUsed returns, for each of keyIDs that has valid verifications, the
// time of the last one and the number in the 30 days before the clock.
// Keys never used are absent from the map.
func (a *Analytics) LastUsed(ctx context.Context, keyIDs []string) (map[string]KeyUse, error) {
	out := map[string]KeyUse{}
	now := a.now()
	since := now.Add(-30 * 24 * time.Hour).Truncate(time.Minute)
	const chunk = 1000
	for start := 0; start < len(keyIDs); start += chunk {
		part := keyIDs[start:min(start+chunk, len(keyIDs))]
		list := make([]string, len(part))
		for i, k := range part {
			list[i] = quote(k)
		}
		in := strings.Join(list, ",")
		rows, err := a.conn.Query(ctx, fmt.Sprintf(`SELECT key_id, toUInt64(max(minute)),
			toUInt64(sumIf(count, minute >= toDateTime(%d) AND minute <= toDateTime(%d)))
			FROM usage_minute WHERE outcome = 'valid' AND key_id IN (%s) GROUP BY key_id`, clampSec(since), clampSec(now), in))
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot query key usage")
		}
		lastMin := map[string]int64{}
		lo := int64(maxSec)
		for rows.Next() {
			var k string
			var m, n uint64
			if err := rows.Scan(&k, &m, &n); err != nil {
				rows.Close()
				return nil, keyledger.Wrap(keyledger.Internal, err, "cannot read key usage")
			}
			out[k] = KeyUse{LastUsedAt: time.Unix(int64(m), 0).UTC(), Uses30d: n}
			lastMin[k] = int64(m)
			lo = min(lo, int64(m))
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read key usage")
		}
		if len(lastMin) == 0 {
			continue
		}
		// Refine to the millisecond from the raw rows (if still retained).
		rows, err = a.conn.Query(ctx, fmt.Sprintf(`SELECT key_id, max(toUInt64(ts) * 1000 + ms) FROM usage_events
			WHERE outcome = 'valid' AND key_id IN (%s) AND ts >= toDateTime(%d) GROUP BY key_id`, in, lo))
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot query key usage")
		}
		for rows.Next() {
			var k string
			var msec uint64
			if err := rows.Scan(&k, &msec); err != nil {
				rows.Close()
				return nil, keyledger.Wrap(keyledger.Internal, err, "cannot read key usage")
			}
			if u, ok := out[k]; ok && int64(msec)/1000 >= lastMin[k] {
				u.LastUsedAt = time.UnixMilli(int64(msec)).UTC()
				out[k] = u
			}
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read key usage")
		}
	}
	return out, nil
}

// SourceCount is one client address of a key with its verifications.
type SourceCount struct {
	IP       string    `json:"ip"`
	Count    uint64    `json:"count"`
	LastSeen time.Time `json:"last_seen"` // start of the last hour it was seen in
}

// MaxSources bounds the addresses of one TopSources query;
// DefaultSources is used when none is given.
const (
	MaxSources     = 1000
	DefaultSources = 10
)

// TopSources returns the addresses that verified keyID most in the hours
// overlapping [from, to), most first (ties by IP), at most limit
// (1..MaxSources; 0 = DefaultSources), so that a console can show where a
// key is used from. Verifications of any outcome count. Counts come from
// the hourly rollup, so they cover whole hours: an hour that [from, to)
// only partly covers counts whole. Zero from/to default to the last 24
// hours by the clock. Verifications without an address are left out. The
// result is empty, not nil, when there are none.
func (a *Analytics) TopSources(ctx context.Context, keyID string, from, to time.Time, limit int) ([]SourceCount, error) {
	if err := events.ValidKeyID(keyID); err != nil {
		return nil, err
	}
	switch {
	case limit == 0:
		limit = DefaultSources
	case limit < 0 || limit > MaxSources:
		return nil, keyledger.Errorf(keyledger.Invalid, "limit must be between 1 and %d", MaxSources)
	}
	if err := defaultRange(&from, &to, a.now(), 24*time.Hour); err != nil {
		return nil, err
	}
	out := []SourceCount{}
	if !from.Before(to) {
		return out, nil // an empty range overlaps no hour
	}
	rows, err := a.conn.Query(ctx, fmt.Sprintf(`SELECT ip, toUInt64(sum(count)) AS c, toUInt64(max(hour))
		FROM usage_key_ip_hour WHERE key_id = %s AND ip != '' AND hour >= toDateTime(%d) AND hour < toDateTime(%d)
		GROUP BY ip HAVING c > 0 ORDER BY c DESC, ip LIMIT %d`,
		quote(keyID), clampSec(from.Truncate(time.Hour)), clampSec(to), limit))
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot query the key's sources")
	}
	defer rows.Close()
	for rows.Next() {
		var s SourceCount
		var last uint64
		if err := rows.Scan(&s.IP, &s.Count, &last); err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "cannot read the key's sources")
		}
		s.LastSeen = time.Unix(int64(last), 0).UTC()
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the key's sources")
	}
	return out, nil
}

// MaxHours bounds the buckets of one Hourly query (31 days).
const MaxHours = 31 * 24

// Hourly returns, for each of keyIDs with any verification (any outcome)
// in the last hours hours up to to, its count per hour, for sparklines in
// a key list: element i counts [start+i·1h, start+(i+1)·1h) where start =
// to.Truncate(time.Hour) − (hours−1)·1h, so the last element is the hour
// holding to. Keys with none are absent. hours must be 1..MaxHours; a zero
// to is the clock.
//
// Counts come from the per-minute rollup, which holds the minutes of the
// events stored so far: the hour holding to (with to the clock, the
// current hour) counts the verifications ingested until now, and a
// minute may still grow while its events arrive. That is fine for a
// sparkline; Usage gives exact counts for any range.
func (a *Analytics) Hourly(ctx context.Context, keyIDs []string, to time.Time, hours int) (map[string][]uint64, error) {
	if hours < 1 || hours > MaxHours {
		return nil, keyledger.Errorf(keyledger.Invalid, "hours must be between 1 and %d", MaxHours)
	}
	for _, k := range keyIDs {
		if err := events.ValidKeyID(k); err != nil {
			return nil, err
		}
	}
	if to.IsZero() {
		to = a.now()
	}
	start := to.UTC().Truncate(time.Hour).Add(-time.Duration(hours-1) * time.Hour)
	end := start.Add(time.Duration(hours) * time.Hour)
	out := map[string][]uint64{}
	const chunk = 1000
	for first := 0; first < len(keyIDs); first += chunk {
		in := quoteList(keyIDs[first:min(first+chunk, len(keyIDs))])
		rows, err := a.conn.Query(ctx, fmt.Sprintf(`SELECT key_id, toUInt64(toStartOfHour(minute)) AS h, toUInt64(sum(count)) AS c
			FROM usage_minute WHERE key_id IN (%s) AND minute >= toDateTime(%d) AND minute < toDateTime(%d)
			GROUP BY key_id, h`, in, clampSec(start), clampSec(end)))
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot query hourly usage")
		}
		for rows.Next() {
			var k string
			var h, c uint64
			if err := rows.Scan(&k, &h, &c); err != nil {
				rows.Close()
				return nil, keyledger.Wrap(keyledger.Internal, err, "cannot read hourly usage")
			}
			i := (int64(h) - start.Unix()) / int64(time.Hour/time.Second)
			if c == 0 || i < 0 || i >= int64(hours) {
				continue
			}
			if out[k] == nil {
				out[k] = make([]uint64, hours)
			}
			out[k][i] += c
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read hourly usage")
		}
	}
	return out, nil
}
