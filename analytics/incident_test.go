package analytics

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	natsgo "github.com/nats-io/nats.go"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// One burst of new addresses on one key is one incident naming them all,
// updated while it grows, resolved when it ends; the rule firing again
// after quiet opens a new one. Two analytics nodes make it one incident
// and the webhook hears each notice once.
func TestIncidents(t *testing.T) {
	tj := MustStartJetStream(t)
	var mu sync.Mutex
	delivered := map[string]int{} // notice id → deliveries
	var hooks []Notice
	webhook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var n Notice
		if err := json.Unmarshal(b, &n); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		mu.Lock()
		delivered[n.id()]++
		hooks = append(hooks, n)
		mu.Unlock()
	}))
	defer webhook.Close()
	published := make(chan *natsgo.Msg, 100)
	sub, err := tj.nc.ChanSubscribe(AlertSubjectPrefix+">", published)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	T := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	var now time.Time
	clock := func() time.Time { return now }
	a := MustOpen(t, Config{JetStream: tj.js, WebhookURL: webhook.URL, BatchSize: 5000, Now: clock})
	MustStart(t, a)
	b := MustOpen(t, Config{DSN: a.cfg.DSN, JetStream: tj.js, WebhookURL: webhook.URL, BatchSize: 5000, Now: clock})
	MustStart(t, b)
	ctx := context.Background()
	w := a.cfg.Window

	live, valid := keyledger.EnvLive, keyledger.OutcomeValid
	var evs []*events.KeyUsed
	for at := T.Add(-w - 14*24*time.Hour); at.Before(T.Add(-w)); at = at.Add(10 * time.Minute) {
		evs = append(evs, used("k_burst", live, valid, "10.0.0.1", at))
	}
	burst := func(at time.Time, ips ...string) {
		for i, ip := range ips {
			evs = append(evs, used("k_burst", live, valid, ip, at.Add(time.Duration(i)*100*time.Millisecond)))
		}
	}
	ips := func(prefix string, from, n int) []string {
		var out []string
		for i := from; i < from+n; i++ {
			out = append(out, fmt.Sprintf("%s.%d", prefix, i))
		}
		return out
	}
	burst(T.Add(-30*time.Second), ips("198.51.100", 1, 40)...)
	T2 := T.Add(time.Minute)
	burst(T2.Add(-30*time.Second), ips("198.51.100", 41, 5)...)
	T5 := T.Add(time.Hour)
	burst(T5.Add(-30*time.Second), ips("203.0.113", 1, 3)...)
	publishUsage(t, tj.js, evs...)
	waitIngested(t, a, uint64(len(evs)), 60*time.Second)

	next := func(what string) Notice {
		t.Helper()
		select {
		case m := <-published:
			var n Notice
			if err := json.Unmarshal(m.Data, &n); err != nil {
				t.Fatal(err)
			}
			return n
		case <-time.After(10 * time.Second):
			t.Fatalf("no notice: want %s", what)
		}
		return Notice{}
	}
	detect := func(on *Analytics, at time.Time) []Alert {
		t.Helper()
		now = at
		// Detect only the events up to at: later bursts are already in
		// ClickHouse, and the window ends at at.
		al, err := on.Detect(ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		return al
	}

	// T: 40 findings, one incident naming 40 addresses. On the other
	// node, the same detection adds nothing.
	if al := detect(a, T); len(al) != 40 {
		t.Fatalf("findings at T: %d, want 40 new_source", len(al))
	}
	first := next("firing")
	if first.Notice != NoticeFiring || first.Rule != RuleNewSource || first.KeyID != "k_burst" || first.AddressCount != 40 ||
		len(first.Addresses) != 40 || len(first.NewAddresses) != 40 || first.Severity != SeverityMedium {
		t.Fatalf("first notice: %s %s %s count %d listed %d new %d", first.Notice, first.Rule, first.KeyID, first.AddressCount, len(first.Addresses), len(first.NewAddresses))
	}
	if al := detect(b, T); len(al) != 0 {
		t.Fatalf("the second node raised %d findings again", len(al))
	}
	// T2: the burst grows by 5: the same incident, updated.
	if al := detect(a, T2); len(al) != 5 {
		t.Fatalf("findings at T2: %d, want the 5 new addresses", len(al))
	}
	upd := next("updated")
	if upd.Notice != NoticeUpdated || upd.ID != first.ID || upd.AddressCount != 45 || len(upd.NewAddresses) != 5 || upd.NewAddresses[0] != "198.51.100.41" {
		t.Fatalf("update: %s %s count %d new %v", upd.Notice, upd.ID, upd.AddressCount, upd.NewAddresses)
	}
	// The same condition seen again changes nothing.
	detect(b, T2.Add(30*time.Second))
	// Quiet past the window and ResolveAfter: resolved.
	T4 := T2.Add(w + a.cfg.ResolveAfter + time.Minute)
	detect(b, T4)
	res := next("resolved")
	if res.Notice != NoticeResolved || res.ID != first.ID || res.Status != StatusResolved || res.ResolvedAt == nil || res.AddressCount != 45 {
		t.Fatalf("resolve: %+v", res)
	}
	// The rule firing again after quiet: a new incident.
	detect(a, T5)
	again := next("a new incident")
	if again.Notice != NoticeFiring || again.ID == first.ID || again.AddressCount != 3 {
		t.Fatalf("after quiet: %s %s (first %s) count %d", again.Notice, again.ID, first.ID, again.AddressCount)
	}

	// Both nodes publishing the same notice: the stream keeps one.
	b.publishNotices(ctx, []Notice{again})
	a.publishNotices(ctx, []Notice{again})
	st, err := tj.js.Stream(ctx, nats.AlertsStream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs != 4 {
		t.Fatalf("ALERTS holds %v notices (%v), want 4", info.State.Msgs, err)
	}
	// Each notice reached the webhook once, whichever node fetched it.
	waitFor(t, 15*time.Second, "4 webhook deliveries", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(hooks) >= 4, fmt.Sprint(len(hooks))
	})
	mu.Lock()
	defer mu.Unlock()
	if len(hooks) != 4 {
		t.Fatalf("webhook got %d notices, want 4", len(hooks))
	}
	for id, n := range delivered {
		if n != 1 {
			t.Errorf("notice %s delivered %d times", id, n)
		}
	}
	incs, err := a.Incidents(ctx, time.Time{}, time.Time{}, 10)
	if err != nil || len(incs) != 2 || incs[0].ID != again.ID || incs[1].Status != StatusResolved || incs[1].Findings != 45 {
		t.Fatalf("incidents: %+v %v", incs, err)
	}
}

func TestWebhookFormats(t *testing.T) {
	at := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	n := Notice{Notice: NoticeFiring, Incident: Incident{ID: "inc_1", Rule: RuleNewSource, Severity: SeverityMedium, Subject: "key_1",
		KeyID: "key_1", Owner: "acme", Status: StatusFiring, OpenedAt: at, UpdatedAt: at, AddressCount: 2,
		Addresses: []Address{{"198.51.100.1", 3}, {"198.51.100.2", 1}}}, NewAddresses: []string{"198.51.100.1", "198.51.100.2"}}
	n.Summary = summary(n)
	if n.Summary != "[FIRING] medium new_source on key key_1 (owner acme): 2 addresses (198.51.100.1, 198.51.100.2)" {
		t.Errorf("summary: %q", n.Summary)
	}
	var slack struct {
		Text   string `json:"text"`
		Blocks []struct {
			Text struct{ Text string } `json:"text"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal(WebhookBody(FormatSlack, n, ""), &slack); err != nil || slack.Text != n.Summary || len(slack.Blocks) != 1 {
		t.Errorf("slack: %+v %v", slack, err)
	}
	var pd struct {
		RoutingKey  string `json:"routing_key"`
		EventAction string `json:"event_action"`
		DedupKey    string `json:"dedup_key"`
		Payload     struct {
			Severity string `json:"severity"`
			Summary  string `json:"summary"`
		} `json:"payload"`
	}
	for _, tc := range []struct{ notice, action string }{{NoticeFiring, "trigger"}, {NoticeUpdated, "trigger"}, {NoticeResolved, "resolve"}} {
		n.Notice = tc.notice
		if err := json.Unmarshal(WebhookBody(FormatPagerDuty, n, "R0UT1NG"), &pd); err != nil || pd.EventAction != tc.action ||
			pd.DedupKey != "inc_1" || pd.RoutingKey != "R0UT1NG" || pd.Payload.Severity != "warning" {
			t.Errorf("pagerduty %s: %+v %v", tc.notice, pd, err)
		}
	}
	if _, err := ParseWebhookFormat("teams"); err == nil {
		t.Error("an unknown format was accepted")
	}
}

var updateExamples = flag.Bool("update", false, "rewrite deploy/alerting/examples from the code")

// The webhook payloads as documented: the notice matches its JSON schema
// (deploy/alerting/notice.schema.json), and the examples in
// deploy/alerting/examples are what the code sends (go test -run
// TestWebhookExamples -update rewrites them).
func TestWebhookExamples(t *testing.T) {
	at := time.Date(2026, 12, 1, 9, 30, 0, 0, time.UTC)
	n := Notice{Notice: NoticeFiring, Incident: Incident{ID: incidentID(RuleNewSource, "key_01a231f9768d78b4bf06c6b699941640", at),
		Rule: RuleNewSource, Severity: Severity(RuleNewSource), Subject: "key_01a231f9768d78b4bf06c6b699941640",
		KeyID: "key_01a231f9768d78b4bf06c6b699941640", Owner: "acme", Status: StatusFiring, OpenedAt: at, UpdatedAt: at, Findings: 3,
		AddressCount: 3, Addresses: []Address{{"198.51.100.7", 12}, {"198.51.100.8", 4}, {"203.0.113.9", 1}},
		Observed: 12, Detail: "1 verifications from 203.0.113.9, an IP this key has not used in the previous 720h0m0s (it used 1 other IPs)"},
		NewAddresses: []string{"198.51.100.7", "198.51.100.8", "203.0.113.9"}}
	n.Summary = summary(n)
	resolved := n
	resolved.Notice, resolved.Status, resolved.NewAddresses = NoticeResolved, StatusResolved, []string{}
	rat := at.Add(15 * time.Minute)
	resolved.ResolvedAt = &rat
	resolved.Summary = summary(resolved)

	schemaPath := filepath.Join("..", "deploy", "alerting", "notice.schema.json")
	c := jsonschema.NewCompiler()
	sch, err := c.Compile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("the schema refuses what is not a notice", func(t *testing.T) {
		bad := n
		bad.Notice = "bogus"
		v, _ := jsonschema.UnmarshalJSON(bytes.NewReader(WebhookBody(FormatJSON, bad, "")))
		if sch.Validate(v) == nil {
			t.Fatal("a notice of kind bogus matched the schema")
		}
	})
	for _, tc := range []struct {
		file   string
		format string
		n      Notice
	}{
		{"notice-firing.json", FormatJSON, n},
		{"notice-resolved.json", FormatJSON, resolved},
		{"slack.json", FormatSlack, n},
		{"pagerduty.json", FormatPagerDuty, n},
	} {
		t.Run(tc.file, func(t *testing.T) {
			body := WebhookBody(tc.format, tc.n, "YOUR_PAGERDUTY_ROUTING_KEY")
			if tc.format == FormatJSON {
				v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if err := sch.Validate(v); err != nil {
					t.Fatalf("the notice does not match its schema: %v", err)
				}
			}
			var pretty bytes.Buffer
			json.Indent(&pretty, body, "", "  ")
			pretty.WriteByte('\n')
			path := filepath.Join("..", "deploy", "alerting", "examples", tc.file)
			if *updateExamples {
				if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			have, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(have, pretty.Bytes()) {
				t.Fatalf("%s is not what the code sends (go test ./analytics/ -run TestWebhookExamples -update): %v", path, err)
			}
		})
	}
}
