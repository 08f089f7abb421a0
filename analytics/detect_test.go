package analytics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	natsgo "github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// TestDetector replays weeks of normal traffic with past timestamps, then
// one window where some keys misbehave: each rule must fire for its
// culprit and stay quiet for the look-alikes.
func TestDetector(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)

	var (
		mu       sync.Mutex
		hooks    []Notice
		attempts int
	)
	webhook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		attempts++
		if attempts == 1 {
			http.Error(w, "try again", http.StatusServiceUnavailable) // the first delivery is retried
			return
		}
		var n Notice
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &n); err != nil || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("webhook body %q: %v", b, err)
		}
		hooks = append(hooks, n)
	}))
	defer webhook.Close()
	published := make(chan *natsgo.Msg, 100)
	sub, err := tj.nc.ChanSubscribe(AlertSubjectPrefix+">", published)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	T := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	reg := prometheus.NewRegistry()
	a := MustOpen(t, Config{JetStream: tj.js, WebhookURL: webhook.URL, Registerer: reg, BatchSize: 5000,
		Now: func() time.Time { return T }})
	MustStart(t, a)
	start := T.Add(-a.cfg.Window)

	var evs []*events.KeyUsed
	live, valid := keyledger.EnvLive, keyledger.OutcomeValid
	history := func(key, ip string, from, to time.Time, every time.Duration) {
		for at := from; at.Before(to); at = at.Add(every) {
			evs = append(evs, used(key, live, valid, ip, at))
		}
	}
	inWindow := func(n int, key string, o keyledger.Outcome, ip string) {
		for i := range n {
			evs = append(evs, used(key, live, o, ip, start.Add(10*time.Second).Add(time.Duration(i)*time.Second)))
		}
	}
	normal := []string{"k_spike", "k_steady", "k_quiet", "k_src", "k_revoked", "k_env", "k_probe", "k_probe_few"}
	for _, k := range normal {
		history(k, "10.0.0.1", start.Add(-14*24*time.Hour), start, 10*time.Minute)
	}
	history("k_dormant", "10.0.0.5", T.Add(-60*24*time.Hour), T.Add(-40*24*time.Hour), time.Hour)
	publishKeyEvent(t, tj.js, created("k_spike", "acme", live, T.Add(-60*24*time.Hour)))
	publishKeyEvent(t, tj.js, created("k_oldnew", "initech", live, T.Add(-45*24*time.Hour)))
	publishKeyEvent(t, tj.js, created("k_fresh", "initech", live, T.Add(-2*24*time.Hour)))

	inWindow(200, "k_spike", valid, "10.0.0.1")
	inWindow(1, "k_steady", valid, "10.0.0.1")
	inWindow(60, "k_quiet", valid, "10.0.0.1") // 100× its baseline but under the floor
	inWindow(2, "k_src", valid, "192.0.2.99")
	inWindow(1, "k_src", valid, "10.0.0.1")
	inWindow(3, "k_revoked", keyledger.OutcomeRevoked, "10.0.0.1")
	inWindow(15, "", keyledger.OutcomeUnknown, "203.0.113.7")
	inWindow(10, "", keyledger.OutcomeMalformed, "203.0.113.7")
	inWindow(5, "", keyledger.OutcomeUnknown, "203.0.113.8")
	inWindow(1, "k_env", keyledger.OutcomeEnvMismatch, "10.0.0.1")
	inWindow(25, "k_probe", keyledger.OutcomeForbidden, "10.0.0.1")
	inWindow(3, "k_probe_few", keyledger.OutcomeForbidden, "10.0.0.1")
	inWindow(1, "k_dormant", valid, "10.0.0.5")
	inWindow(1, "k_oldnew", valid, "10.0.0.6")
	inWindow(1, "k_fresh", valid, "10.0.0.7")
	publishUsage(t, tj.js, evs...)
	waitIngested(t, a, uint64(len(evs)), 60*time.Second)
	ctx := context.Background()
	waitFor(t, 10*time.Second, "key events", func() (bool, string) {
		evs, _ := a.Audit(ctx, AuditQuery{})
		return len(evs) == 3, fmt.Sprint(len(evs))
	})

	// An hour earlier everything was normal.
	if al, err := a.Detect(ctx, T.Add(-time.Hour)); err != nil || len(al) != 0 {
		t.Fatalf("Detect(T-1h) = %+v, %v; want no alerts", al, err)
	}

	got, err := a.Detect(ctx, T)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"dormant_key k_dormant 10.0.0.5",
		"dormant_key k_oldnew 10.0.0.6",
		"env_mismatch k_env 10.0.0.1",
		"key_guessing  203.0.113.7",
		"new_source k_src 192.0.2.99",
		"permission_probing k_probe 10.0.0.1",
		"revoked_key_used k_revoked 10.0.0.1",
		"volume_spike k_spike ",
	}
	if g := alertIDs(got); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("alerts:\n got %q\nwant %q\n%+v", g, want, got)
	}
	byRule := map[string]Alert{}
	for _, al := range got {
		byRule[al.Rule+" "+al.KeyID] = al
		if !al.At.Equal(T) || al.Detail == "" {
			t.Errorf("alert %+v: want at %s and a detail", al, T)
		}
	}
	if s := byRule["volume_spike k_spike"]; s.Owner != "acme" || s.Observed != 200 || s.Baseline < 0.4 || s.Baseline > 0.6 {
		t.Errorf("volume_spike = %+v (want owner acme, observed 200, baseline ≈ 0.5)", s)
	}
	if s := byRule["new_source k_src"]; s.Observed != 2 || s.Baseline != 1 {
		t.Errorf("new_source = %+v (want observed 2, baseline 1 known IP)", s)
	}
	if s := byRule["key_guessing "]; s.Observed != 25 || s.Baseline != 20 {
		t.Errorf("key_guessing = %+v", s)
	}
	if s := byRule["dormant_key k_dormant"]; s.Observed < 39 || s.Observed > 41 || s.Baseline != 30 {
		t.Errorf("dormant_key = %+v (want ≈ 40 days)", s)
	}
	if s := byRule["dormant_key k_oldnew"]; s.Owner != "initech" || s.Observed < 44 || s.Observed > 46 {
		t.Errorf("dormant_key (never used) = %+v", s)
	}
	if s := byRule["permission_probing k_probe"]; s.Observed != 25 {
		t.Errorf("permission_probing = %+v", s)
	}

	// One alert per rule and key/IP per window: the next tick is silent.
	if again, err := a.Detect(ctx, T.Add(30*time.Second)); err != nil || len(again) != 0 {
		t.Fatalf("Detect(T+30s) = %+v, %v; want nothing new", again, err)
	}
	stored, err := a.Alerts(ctx, AlertQuery{From: T.Add(-time.Minute), To: T.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if g := alertIDs(stored); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Errorf("stored alerts = %q", g)
	}
	if st, _ := a.Alerts(ctx, AlertQuery{Rule: RuleDormantKey}); len(st) != 2 {
		t.Errorf("alerts rule=dormant_key: %+v", st)
	}
	if st, _ := a.Alerts(ctx, AlertQuery{KeyID: "k_src"}); len(st) != 1 || st[0].IP != "192.0.2.99" {
		t.Errorf("alerts key_id=k_src: %+v", st)
	}
	// Published on NATS, one subject per rule: each finding opened an
	// incident of its own, so each is a firing notice.
	var pub []Notice
	for len(pub) < len(want) {
		select {
		case m := <-published:
			var n Notice
			if err := json.Unmarshal(m.Data, &n); err != nil {
				t.Fatal(err)
			}
			if m.Subject != AlertSubjectPrefix+n.Rule || n.Notice != NoticeFiring || n.Severity != Severity(n.Rule) {
				t.Errorf("notice %s %s (%s) on subject %s", n.Notice, n.Rule, n.Severity, m.Subject)
			}
			pub = append(pub, n)
		case <-time.After(5 * time.Second):
			t.Fatalf("published %d notices, want %d", len(pub), len(want))
		}
	}
	if g := noticeIDs(pub); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Errorf("published = %q", g)
	}
	// The webhook hears each once (the first delivery was refused and
	// retried), from the ALERTS stream.
	waitFor(t, 10*time.Second, "webhook deliveries", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(hooks) == len(want), fmt.Sprint(len(hooks))
	})
	mu.Lock()
	if g := noticeIDs(hooks); fmt.Sprint(g) != fmt.Sprint(want) || attempts != len(want)+1 {
		t.Errorf("webhook got %q in %d attempts", g, attempts)
	}
	mu.Unlock()
	if n := metricValue(a.metrics.alerts.WithLabelValues(RuleDormantKey)); n != 2 {
		t.Errorf("alerts metric dormant_key = %v", n)
	}

	// Thresholds are configurable: with a lower floor k_quiet spikes too.
	a.cfg.Thresholds.SpikeMin = 50
	more, err := a.Detect(ctx, T)
	if err != nil {
		t.Fatal(err)
	}
	if g := alertIDs(more); fmt.Sprint(g) != "[volume_spike k_quiet ]" {
		t.Errorf("with SpikeMin 50: %q", g)
	}
}

// noticeIDs names notices like alertIDs names alerts: rule, key, first
// address.
func noticeIDs(ns []Notice) []string {
	var al []Alert
	for _, n := range ns {
		a := Alert{Rule: n.Rule, KeyID: n.KeyID}
		if len(n.Addresses) > 0 {
			a.IP = n.Addresses[0].IP
		}
		al = append(al, a)
	}
	return alertIDs(al)
}

func alertIDs(al []Alert) []string {
	var out []string
	for _, a := range al {
		out = append(out, a.Rule+" "+a.KeyID+" "+a.IP)
	}
	sort.Strings(out)
	return out
}
