package analytics

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Alerts a human reads: the detector's findings (Alert, one per rule, key
// and IP) are grouped into incidents, one per rule and subject (the key,
// or the IP for rules that have no key) while the condition goes on. A
// webhook receiver, and anyone on keyledger.alerts.>, hears of an
// incident three ways: when it opens (firing), when it grows (updated:
// new addresses), and when the rule has found nothing on the subject for
// Config.ResolveAfter (resolved). The next finding after that opens a new
// incident.

// Severities, per rule (see Severity).
const (
	SeverityCritical = "critical"
	SeverityHigh     = "high"
	SeverityMedium   = "medium"
	SeverityLow      = "low"
)

var ruleSeverity = map[string]string{
	RuleLedgerForgery:     SeverityCritical,
	RuleLedgerReplaced:    SeverityCritical,
	RuleLedgerDivergence:  SeverityCritical,
	RuleKeyLeaked:         SeverityHigh,
	RuleRevokedKeyUsed:    SeverityHigh,
	RuleKeyGuessing:       SeverityHigh,
	RulePermissionProbing: SeverityHigh,
	RuleVolumeSpike:       SeverityMedium,
	RuleNewSource:         SeverityMedium,
	RuleEnvMismatch:       SeverityMedium,
	RuleDormantKey:        SeverityLow,
	RuleQuota100:          SeverityHigh,
	RuleQuota80:           SeverityMedium,
	RuleCreditsLow:        SeverityMedium,
}

// Severity is a rule's severity: critical (the ledger itself is
// attacked), high (a key is being abused, or an owner's quota is spent:
// its verifications are about to be refused), medium (a key is used
// unlike itself, or a quota or credits balance nears its end), low (worth
// a look).
func Severity(rule string) string {
	if s, ok := ruleSeverity[rule]; ok {
		return s
	}
	return SeverityMedium
}

// Notice kinds.
const (
	NoticeFiring   = "firing"
	NoticeUpdated  = "updated"
	NoticeResolved = "resolved"
)

// Incident statuses.
const (
	StatusFiring   = "firing"
	StatusResolved = "resolved"
)

// MaxIncidentAddresses bounds the addresses an incident lists (the count
// goes on).
const MaxIncidentAddresses = 200

// Address is a client address of an incident with its verifications.
type Address struct {
	IP       string  `json:"ip"`
	Observed float64 `json:"observed"`
}

// Incident is the findings of one rule on one subject while they go on.
type Incident struct {
	ID       string `json:"id"`
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	// Subject is what the rule fired on: the key id, or the IP for rules
	// without a key (key_guessing), or the owner's ledger id
	// (keyledger.OwnerID) for quota_80 and quota_100.
	Subject    string     `json:"subject"`
	KeyID      string     `json:"key_id"`
	Owner      string     `json:"owner"`
	Status     string     `json:"status"`
	OpenedAt   time.Time  `json:"opened_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	ResolvedAt *time.Time `json:"resolved_at"`
	// Findings counts the alerts grouped into the incident.
	Findings int `json:"findings"`
	// AddressCount counts the distinct addresses seen; Addresses lists
	// them (at most MaxIncidentAddresses), most verifications first.
	AddressCount int       `json:"address_count"`
	Addresses    []Address `json:"addresses"`
	// Observed is the largest figure a finding reported; Detail the
	// latest finding's words.
	Observed float64 `json:"observed"`
	Detail   string  `json:"detail"`

	seen time.Time // last time a detection found the condition
}

// Notice is what a webhook receives and keyledger.alerts.<rule> carries:
// an incident as it is now, why it is sent (Notice), a one-line summary,
// and the addresses new since the last notice.
type Notice struct {
	Notice  string `json:"notice"`
	Summary string `json:"summary"`
	Incident
	NewAddresses []string `json:"new_addresses"`
}

// id names the notice for deduplication across analytics nodes
// (Nats-Msg-Id): two nodes seeing the same transition publish one notice.
func (n Notice) id() string {
	if n.Notice == NoticeUpdated {
		return fmt.Sprintf("%s:%s:%d", n.ID, n.Notice, n.AddressCount)
	}
	return n.ID + ":" + n.Notice
}

func summary(n Notice) string {
	subj := n.Subject
	switch {
	case strings.HasPrefix(n.KeyID, keyledger.OwnerIDPrefix) && n.Owner != "":
		subj = "owner " + n.Owner // an owner's quota
	case n.KeyID != "":
		subj = "key " + n.KeyID
		if n.Owner != "" {
			subj += " (owner " + n.Owner + ")"
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] %s %s on %s", strings.ToUpper(n.Notice), n.Severity, n.Rule, subj)
	if n.AddressCount > 0 {
		fmt.Fprintf(&b, ": %d address", n.AddressCount)
		if n.AddressCount > 1 {
			b.WriteString("es")
		}
		top := n.Addresses[:min(3, len(n.Addresses))]
		ips := make([]string, len(top))
		for i, a := range top {
			ips[i] = a.IP
		}
		b.WriteString(" (" + strings.Join(ips, ", "))
		if n.AddressCount > len(top) {
			b.WriteString(", …")
		}
		b.WriteString(")")
	}
	if n.Notice == NoticeResolved {
		fmt.Fprintf(&b, "; quiet since %s", n.UpdatedAt.Format(time.RFC3339))
	}
	return b.String()
}

type subjectKey struct{ rule, subject string }

func subjectOf(al Alert) string {
	switch {
	case al.KeyID != "":
		return al.KeyID
	case al.IP != "":
		return al.IP
	}
	return "ledger" // a finding about the ledger as a whole
}

// incidentID is deterministic, so that two analytics nodes opening the
// same incident in the same window bucket write the same row.
func incidentID(rule, subject string, bucket time.Time) string {
	h := sha256.Sum256([]byte(rule + "\x00" + subject + "\x00" + bucket.UTC().Format(time.RFC3339)))
	return "inc_" + hex.EncodeToString(h[:12])
}

// track folds one detection's findings into the incidents: found is
// everything the rules saw (it keeps an incident open), fresh the findings
// not alerted before (they count). It stores what changed and returns the
// notices to send.
func (a *Analytics) track(ctx context.Context, d *detection, found, fresh []Alert) ([]Notice, error) {
	open, err := a.openIncidents(ctx)
	if err != nil {
		return nil, err
	}
	groups := map[subjectKey][]Alert{}
	var order []subjectKey
	for _, al := range found {
		k := subjectKey{al.Rule, subjectOf(al)}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], al)
	}
	freshCount := map[subjectKey]int{}
	for _, al := range fresh {
		freshCount[subjectKey{al.Rule, subjectOf(al)}]++
	}
	var notices []Notice
	var changed []*Incident
	for _, k := range order {
		als := groups[k]
		inc, ok := open[k]
		kind := NoticeFiring
		if ok {
			kind = ""
		} else {
			inc = &Incident{ID: incidentID(k.rule, k.subject, d.now.Truncate(a.cfg.Window)), Rule: k.rule, Severity: Severity(k.rule),
				Subject: k.subject, Status: StatusFiring, OpenedAt: d.now}
		}
		added := inc.merge(als)
		inc.Findings += freshCount[k]
		inc.seen, inc.UpdatedAt = d.now, d.now
		if kind == "" && len(added) > 0 {
			kind = NoticeUpdated
		}
		changed = append(changed, inc)
		if kind != "" {
			notices = append(notices, Notice{Notice: kind, Incident: *inc, NewAddresses: added})
		}
		delete(open, k)
	}
	// What no rule found this time: resolved once quiet long enough.
	var quiet []*Incident
	for _, inc := range open {
		quiet = append(quiet, inc)
	}
	sort.Slice(quiet, func(i, j int) bool { return quiet[i].ID < quiet[j].ID })
	for _, inc := range quiet {
		if d.now.Sub(inc.seen) < a.cfg.ResolveAfter {
			continue
		}
		at := d.now
		inc.Status, inc.ResolvedAt, inc.UpdatedAt = StatusResolved, &at, inc.seen
		changed = append(changed, inc)
		notices = append(notices, Notice{Notice: NoticeResolved, Incident: *inc, NewAddresses: []string{}})
	}
	if err := a.storeIncidents(ctx, d.now, changed); err != nil {
		return nil, err
	}
	for i := range notices {
		if notices[i].NewAddresses == nil {
			notices[i].NewAddresses = []string{}
		}
		notices[i].Summary = summary(notices[i])
	}
	return notices, nil
}

// merge adds findings to the incident and returns the addresses it had
// not listed.
func (inc *Incident) merge(als []Alert) []string {
	known := map[string]int{}
	for i, ad := range inc.Addresses {
		known[ad.IP] = i
	}
	var added []string
	for _, al := range als {
		if al.Owner != "" {
			inc.Owner = al.Owner
		}
		if al.KeyID != "" {
			inc.KeyID = al.KeyID
		}
		inc.Observed = max(inc.Observed, al.Observed)
		inc.Detail = al.Detail
		if al.IP == "" {
			continue
		}
		if i, ok := known[al.IP]; ok {
			inc.Addresses[i].Observed = max(inc.Addresses[i].Observed, al.Observed)
			continue
		}
		inc.AddressCount++
		added = append(added, al.IP)
		known[al.IP] = len(inc.Addresses)
		inc.Addresses = append(inc.Addresses, Address{IP: al.IP, Observed: al.Observed})
	}
	sort.SliceStable(inc.Addresses, func(i, j int) bool {
		if inc.Addresses[i].Observed != inc.Addresses[j].Observed {
			return inc.Addresses[i].Observed > inc.Addresses[j].Observed
		}
		return inc.Addresses[i].IP < inc.Addresses[j].IP
	})
	if len(inc.Addresses) > MaxIncidentAddresses {
		inc.Addresses = inc.Addresses[:MaxIncidentAddresses]
	}
	if inc.Addresses == nil {
		inc.Addresses = []Address{}
	}
	sort.Strings(added)
	return added
}

const incidentColumns = "id, rule, subject, key_id, owner, severity, status, opened, updated, seen, resolved, findings, address_count, addresses, observed, detail, version"

func (a *Analytics) openIncidents(ctx context.Context) (map[subjectKey]*Incident, error) {
	out := map[subjectKey]*Incident{}
	// The newest state of each incident, by argMax rather than FINAL plus
	// a WHERE on status: a condition ClickHouse may move before the
	// merge (PREWHERE) would see an older "firing" row of a resolved one.
	var cols []string
	for _, c := range strings.Split(incidentColumns, ", ") {
		if c == "id" {
			cols = append(cols, c)
			continue
		}
		cols = append(cols, "argMax("+c+", version)")
	}
	q := `SELECT ` + strings.Join(cols, ", ") + ` FROM incidents GROUP BY id HAVING argMax(status, version) = 'firing'`
	err := a.query(ctx, q, func(scan func(...any) error) error {
		inc, err := scanIncident(scan)
		if err != nil {
			return err
		}
		out[subjectKey{inc.Rule, inc.Subject}] = inc
		return nil
	})
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read open incidents")
	}
	return out, nil
}

func scanIncident(scan func(...any) error) (*Incident, error) {
	var inc Incident
	var opened, updated, seen, resolved, version uint64
	var findings, count uint64
	var addrs string
	if err := scan(&inc.ID, &inc.Rule, &inc.Subject, &inc.KeyID, &inc.Owner, &inc.Severity, &inc.Status, &opened, &updated, &seen,
		&resolved, &findings, &count, &addrs, &inc.Observed, &inc.Detail, &version); err != nil {
		return nil, err
	}
	inc.OpenedAt, inc.UpdatedAt, inc.seen = time.UnixMilli(int64(opened)).UTC(), time.UnixMilli(int64(updated)).UTC(), time.UnixMilli(int64(seen)).UTC()
	if resolved > 0 {
		t := time.UnixMilli(int64(resolved)).UTC()
		inc.ResolvedAt = &t
	}
	inc.Findings, inc.AddressCount = int(findings), int(count)
	if err := json.Unmarshal([]byte(addrs), &inc.Addresses); err != nil || inc.Addresses == nil {
		inc.Addresses = []Address{}
	}
	return &inc, nil
}

func (a *Analytics) storeIncidents(ctx context.Context, now time.Time, incs []*Incident) error {
	if len(incs) == 0 {
		return nil
	}
	b, err := a.conn.PrepareBatch(ctx, "INSERT INTO incidents ("+incidentColumns+")")
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot store incidents")
	}
	defer b.Close()
	for _, inc := range incs {
		addrs, _ := json.Marshal(inc.Addresses)
		var resolved uint64
		if inc.ResolvedAt != nil {
			resolved = uint64(inc.ResolvedAt.UnixMilli())
		}
		if err := b.Append(inc.ID, inc.Rule, inc.Subject, inc.KeyID, inc.Owner, inc.Severity, inc.Status,
			uint64(inc.OpenedAt.UnixMilli()), uint64(inc.UpdatedAt.UnixMilli()), uint64(inc.seen.UnixMilli()), resolved,
			uint64(inc.Findings), uint64(inc.AddressCount), string(addrs), inc.Observed, clipStr(inc.Detail, 500),
			uint64(now.UnixMilli())); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot store incidents")
		}
	}
	if err := b.Send(); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot store incidents")
	}
	return nil
}

// Incidents returns incidents opened in [from, to) (zero: all), newest
// first, at most limit (0: DefaultLimit).
func (a *Analytics) Incidents(ctx context.Context, from, to time.Time, limit int) ([]Incident, error) {
	limit, err := checkLimit(limit)
	if err != nil {
		return nil, err
	}
	cond := "1"
	if !from.IsZero() || !to.IsZero() {
		if to.IsZero() {
			to = time.UnixMilli(maxSec * 1000)
		}
		cond = fmt.Sprintf("opened >= %d AND opened < %d", max(from.UnixMilli(), 0), max(to.UnixMilli(), 0))
	}
	out := []Incident{}
	err = a.query(ctx, fmt.Sprintf(`SELECT %s FROM incidents FINAL WHERE %s ORDER BY opened DESC, id LIMIT %d`, incidentColumns, cond, limit),
		func(scan func(...any) error) error {
			inc, err := scanIncident(scan)
			if err == nil {
				out = append(out, *inc)
			}
			return err
		})
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot query incidents")
	}
	return out, nil
}

// publishNotices publishes each notice on keyledger.alerts.<rule> with its
// id as Nats-Msg-Id: the ALERTS stream keeps one copy however many
// analytics nodes publish it, and the webhook is fed from that stream
// (deliverNotices). Without a JetStream the notices are published on
// plain NATS and POSTed from here.
func (a *Analytics) publishNotices(ctx context.Context, notices []Notice) {
	for _, n := range notices {
		a.metrics.notices.WithLabelValues(n.Rule, n.Notice).Inc()
		a.log.Warn("analytics: alert "+n.Notice, "incident", n.ID, "rule", n.Rule, "severity", n.Severity, "key_id", n.KeyID,
			"owner", n.Owner, "addresses", n.AddressCount)
		data, _ := json.Marshal(n)
		msg := &natsgo.Msg{Subject: AlertSubjectPrefix + n.Rule, Data: data, Header: natsgo.Header{}}
		msg.Header.Set(natsgo.MsgIdHdr, n.id())
		switch {
		case a.cfg.JetStream != nil:
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := a.cfg.JetStream.PublishMsg(pctx, msg)
			cancel()
			if errors.Is(err, jetstream.ErrNoStreamResponse) && a.cfg.NATS != nil {
				// No ALERTS stream (admin nodes of an older version):
				// subscribers still hear of it, undeduplicated.
				err = a.cfg.NATS.PublishMsg(msg)
			}
			if err != nil {
				a.log.Warn("analytics: cannot publish alert notice", "incident", n.ID, "notice", n.Notice, "err", err)
			}
		case a.cfg.NATS != nil:
			if err := a.cfg.NATS.PublishMsg(msg); err != nil {
				a.log.Warn("analytics: cannot publish alert notice", "incident", n.ID, "err", err)
			}
		}
	}
	if a.cfg.JetStream == nil && a.cfg.WebhookURL != "" {
		wctx, cancel := context.WithTimeout(ctx, webhookBudget)
		defer cancel()
		for _, n := range notices {
			if err := a.postWebhook(wctx, n); err != nil {
				a.log.Warn("analytics: webhook delivery failed", "incident", n.ID, "notice", n.Notice, "err", err)
			}
		}
	}
}
