package analytics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/quota"
	natsgo "github.com/nats-io/nats.go"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

func TestQuotaAlertThresholds(t *testing.T) {
	for _, tc := range []struct {
		v     quota.Value
		level int
	}{
		{quota.Value{Kind: quota.KindQuota, Used: 7999, Limit: 10000}, 0},
		{quota.Value{Kind: quota.KindQuota, Used: 8000, Limit: 10000}, 1},
		{quota.Value{Kind: quota.KindQuota, Used: 9999, Limit: 10000}, 1},
		{quota.Value{Kind: quota.KindQuota, Used: 10000, Limit: 10000}, 2},
		{quota.Value{Kind: quota.KindQuota, Used: 5, Limit: 7}, 0}, // 71 %
		{quota.Value{Kind: quota.KindQuota, Used: 6, Limit: 7}, 1}, // 86 %
		{quota.Value{Kind: quota.KindQuota, Used: 1 << 62, Limit: 1<<62 + 1<<60}, 1},
		{quota.Value{Kind: quota.KindCredits, Used: 899, Limit: 1000}, 0},
		{quota.Value{Kind: quota.KindCredits, Used: 900, Limit: 1000}, 1}, // 10 % left
		{quota.Value{Kind: quota.KindCredits, Used: 39, Limit: 50}, 0},
		{quota.Value{Kind: quota.KindCredits, Used: 40, Limit: 50}, 1}, // 10 units left
		{quota.Value{Kind: quota.KindCredits, Used: 0, Limit: 5}, 0},   // nothing drawn
		{quota.Value{Kind: quota.KindCredits, Used: 1, Limit: 5}, 1},
		{quota.Value{Kind: quota.KindRate, Used: 100, Limit: 100}, 0},
	} {
		if l, _ := quotaLevel(tc.v); l != tc.level {
			t.Errorf("%+v: level %d, want %d", tc.v, l, tc.level)
		}
	}
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 10000: "10,000", 1234567: "1,234,567", -1000: "-1,000"} {
		if g := grouped(n); g != want {
			t.Errorf("grouped(%d) = %q, want %q", n, g, want)
		}
	}
}

// The quota counters raise quota_80, quota_100 and credits_low through
// the alert pipeline (stored, an incident, a notice on ALERTS), once per
// counter and period, across a restart too; rate counters and values
// that are not quota values raise nothing. The counters' stream is
// created after the watcher starts, as when admin nodes come up later.
func TestQuotaAlerts(t *testing.T) {
	tj := MustStartJetStream(t)
	ctx := context.Background()
	if err := tj.js.DeleteStream(ctx, nats.CountersStream); err != nil {
		t.Fatal(err)
	}
	// Analytics and the watcher with the analytics role's permissions.
	_, ajs := tj.env.ConnectAs(t, natstest.Analytics)

	var clockMu sync.Mutex
	now := time.Date(2026, 12, 10, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time {
		clockMu.Lock()
		defer clockMu.Unlock()
		return now
	}
	// Each step a window later: an alert raised again would be a row of
	// its own rather than collapse into the first.
	advance := func() {
		clockMu.Lock()
		now = now.Add(time.Hour)
		clockMu.Unlock()
	}
	a := MustOpen(t, Config{JetStream: ajs, Now: clock})

	published := make(chan *natsgo.Msg, 100)
	sub, err := tj.nc.ChanSubscribe(AlertSubjectPrefix+">", published)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	open := func() *QuotaAlerts {
		t.Helper()
		q, err := OpenQuotaAlerts(ctx, ajs, a, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := q.Close(cctx); err != nil {
				t.Error(err)
			}
		})
		return q
	}
	q := open()

	if _, err := tj.js.CreateStream(ctx, nats.CountersStreamConfig(nats.StreamConfig{})); err != nil {
		t.Fatal(err)
	}
	kv, err := tj.js.KeyValue(ctx, nats.CountersBucket)
	if err != nil {
		t.Fatal(err)
	}
	putRaw := func(key string, b []byte) {
		t.Helper()
		if _, err := kv.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
	}
	put := func(key string, v quota.Value) {
		t.Helper()
		b, _ := json.Marshal(v)
		putRaw(key, b)
	}
	const month = "2026-12"
	acme := nats.CounterKey(quota.KindQuota, keyledger.OwnerID("acme"))
	acmeQuota := func(used int64) quota.Value {
		return quota.Value{Kind: quota.KindQuota, Period: month, Used: used, Limit: 10000, Owner: "acme"}
	}
	alerts := func() []Alert {
		t.Helper()
		al, err := a.Alerts(ctx, AlertQuery{})
		if err != nil {
			t.Fatal(err)
		}
		return al
	}
	count := func(rule, keyID string) int {
		n := 0
		for _, al := range alerts() {
			if al.Rule == rule && (keyID == "" || al.KeyID == keyID) {
				n++
			}
		}
		return n
	}
	waitAlert := func(rule, keyID string, n int) Alert {
		t.Helper()
		waitFor(t, 30*time.Second, fmt.Sprintf("%d %s alerts on %s", n, rule, keyID), func() (bool, string) {
			return count(rule, keyID) >= n, fmt.Sprintf("%+v", alerts())
		})
		var last Alert
		for _, al := range alerts() {
			if al.Rule == rule && al.KeyID == keyID {
				last = al
			}
		}
		return last
	}
	notice := func(rule string) Notice {
		t.Helper()
		for {
			select {
			case m := <-published:
				var n Notice
				if err := json.Unmarshal(m.Data, &n); err != nil {
					t.Fatal(err)
				}
				if n.Notice == NoticeResolved {
					// Raise resolves quiet incidents, as Detect does:
					// the clock moves an hour a step.
					continue
				}
				if n.Rule == rule {
					return n
				}
				t.Fatalf("notice %s %s on %s, want %s", n.Notice, n.Rule, n.Subject, rule)
			case <-time.After(10 * time.Second):
				t.Fatalf("no %s notice", rule)
			}
		}
	}

	// Below 80 %, then at 80 %: quota_80, its incident and notice name
	// the owner.
	put(acme, acmeQuota(7999))
	put(acme, acmeQuota(8000))
	al := waitAlert(RuleQuota80, keyledger.OwnerID("acme"), 1)
	if al.Owner != "acme" || al.Observed != 8000 || al.Baseline != 8000 ||
		!strings.HasPrefix(al.Detail, "8,000 of 10,000 verifications of plan month 2026-12 drawn (80 %)") ||
		!strings.Contains(al.Detail, "drawn units run ahead of passed verifications") {
		t.Errorf("quota_80 = %+v", al)
	}
	n := notice(RuleQuota80)
	if n.Notice != NoticeFiring || n.Severity != SeverityMedium || n.Owner != "acme" || n.KeyID != keyledger.OwnerID("acme") ||
		n.Subject != keyledger.OwnerID("acme") || n.Summary != "[FIRING] medium quota_80 on owner acme" {
		t.Errorf("quota_80 notice = %+v", n)
	}
	sch, err := jsonschema.NewCompiler().Compile(filepath.Join("..", "deploy", "alerting", "notice.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := jsonschema.UnmarshalJSON(bytes.NewReader(WebhookBody(FormatJSON, n, ""))); err != nil {
		t.Fatal(err)
	} else if err := sch.Validate(v); err != nil {
		t.Errorf("the quota_80 notice does not match its schema: %v", err)
	}

	// Still above 80 %: nothing new. A rate counter, values that are
	// not quota values, a limit that is not positive, a quota of a month
	// that has ended: nothing. Then 100 %: quota_100. Everything before
	// it was read first (one consumer, in order).
	advance()
	put(acme, acmeQuota(9000))
	rate := nats.CounterKey(quota.KindRate, "fleet")
	put(rate, quota.Value{Kind: quota.KindRate, Period: "1796904000", Used: 100, Limit: 100})
	putRaw(nats.CounterKey(quota.KindQuota, keyledger.OwnerID("garbage")), []byte("not json {"))
	putRaw(nats.CounterKey(quota.KindCredits, "key_garbage"), []byte(`{"kind":"credits","used":"many"}`))
	put(nats.CounterKey(quota.KindQuota, keyledger.OwnerID("zero")), quota.Value{Kind: quota.KindQuota, Period: month, Used: 5, Limit: 0, Owner: "zero"})
	put(nats.CounterKey(quota.KindQuota, keyledger.OwnerID("unlimited")), quota.Value{Kind: quota.KindQuota, Period: month, Used: 5, Limit: -1, Owner: "unlimited"})
	put(nats.CounterKey(quota.KindCredits, "key_nolimit"), quota.Value{Kind: quota.KindCredits, Period: "7", Used: 5, Limit: 0, KeyID: "key_nolimit"})
	put(nats.CounterKey(quota.KindQuota, keyledger.OwnerID("initech")), quota.Value{Kind: quota.KindQuota, Period: "2026-11", Used: 10, Limit: 10, Owner: "initech"})
	advance()
	put(acme, acmeQuota(10000))
	al = waitAlert(RuleQuota100, keyledger.OwnerID("acme"), 1)
	if al.Owner != "acme" || !strings.HasPrefix(al.Detail, "10,000 of 10,000 verifications of plan month 2026-12 drawn (100 %)") {
		t.Errorf("quota_100 = %+v", al)
	}
	if n := notice(RuleQuota100); n.Severity != SeverityHigh || n.Owner != "acme" {
		t.Errorf("quota_100 notice = %+v", n)
	}
	if got := alerts(); len(got) != 2 {
		t.Fatalf("alerts = %+v, want quota_80 and quota_100 on acme alone", got)
	}

	// A counter whose first value is past 100 % raises quota_100 alone;
	// a returned lease taking it back under raises nothing.
	advance()
	globex := nats.CounterKey(quota.KindQuota, keyledger.OwnerID("globex"))
	put(globex, quota.Value{Kind: quota.KindQuota, Period: month, Used: 500, Limit: 500, Owner: "globex"})
	waitAlert(RuleQuota100, keyledger.OwnerID("globex"), 1)
	notice(RuleQuota100)
	put(globex, quota.Value{Kind: quota.KindQuota, Period: month, Used: 450, Limit: 500, Owner: "globex"})

	// Credits: 10 % left of a large balance, 10 units of a small one. The
	// owner comes from the counter.
	advance()
	big := nats.CounterKey(quota.KindCredits, "key_big")
	credits := func(period string, used, limit int64) quota.Value {
		return quota.Value{Kind: quota.KindCredits, Period: period, Used: used, Limit: limit, KeyID: "key_big", Owner: "acme"}
	}
	put(big, credits("42", 899, 1000))
	put(big, credits("42", 900, 1000))
	al = waitAlert(RuleCreditsLow, "key_big", 1)
	if al.Owner != "acme" || al.Detail != "900 of 1,000 credits of the balance set at ledger revision 42 drawn, 100 left"+leaseNote {
		t.Errorf("credits_low = %+v", al)
	}
	if n := notice(RuleCreditsLow); n.Severity != SeverityMedium || n.KeyID != "key_big" || n.Owner != "acme" ||
		n.Summary != "[FIRING] medium credits_low on key key_big (owner acme)" {
		t.Errorf("credits_low notice = %+v", n)
	}
	small := nats.CounterKey(quota.KindCredits, "key_small")
	put(small, quota.Value{Kind: quota.KindCredits, Period: "43/2026-12-10", Used: 39, Limit: 50, KeyID: "key_small"})
	put(small, quota.Value{Kind: quota.KindCredits, Period: "43/2026-12-10", Used: 40, Limit: 50, KeyID: "key_small"})
	al = waitAlert(RuleCreditsLow, "key_small", 1)
	if al.Owner != "" || al.Detail != "40 of 50 credits of the balance set at ledger revision 43, refill period from 2026-12-10, drawn, 10 left"+leaseNote {
		t.Errorf("credits_low (small) = %+v", al)
	}
	notice(RuleCreditsLow)

	// A restart reads every counter's last value again and finds its
	// alerts raised; a new credits period of key_big raises again (a new
	// incident: the detector has resolved the quiet ones meanwhile).
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if err := q.Close(cctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	advance()
	if _, err := a.Detect(ctx, clock()); err != nil {
		t.Fatal(err)
	}
	open()
	put(big, credits("44", 950, 1000))
	waitAlert(RuleCreditsLow, "key_big", 2)
	notice(RuleCreditsLow)
	want := map[string]int{"quota_80 " + keyledger.OwnerID("acme"): 1, "quota_100 " + keyledger.OwnerID("acme"): 1,
		"quota_100 " + keyledger.OwnerID("globex"): 1, "credits_low key_big": 2, "credits_low key_small": 1}
	have := map[string]int{}
	for _, al := range alerts() {
		have[al.Rule+" "+al.KeyID]++
	}
	if fmt.Sprint(have) != fmt.Sprint(want) {
		t.Errorf("alerts by rule and key = %v, want %v", have, want)
	}
	for {
		select {
		case m := <-published:
			var n Notice
			json.Unmarshal(m.Data, &n)
			if n.Notice != NoticeResolved {
				t.Errorf("unexpected notice: %s", m.Data)
			}
			continue
		default:
		}
		break
	}
}

// Close stops a watcher still waiting for the counters' stream.
func TestQuotaAlertsCloseWhileWaiting(t *testing.T) {
	tj := MustStartJetStream(t)
	ctx := context.Background()
	if err := tj.js.DeleteStream(ctx, nats.CountersStream); err != nil {
		t.Fatal(err)
	}
	_, ajs := tj.env.ConnectAs(t, natstest.Analytics)
	a := MustOpen(t, Config{})
	q, err := OpenQuotaAlerts(ctx, ajs, a, nil)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := q.Close(cctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(cctx); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenQuotaAlerts(ctx, nil, a, nil); err == nil {
		t.Error("no JetStream accepted")
	}
}
