package analytics

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

func TestHandlerValidation(t *testing.T) {
	t.Parallel()
	a := MustOpen(t, Config{})
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		method, target string
		status         int
		code           keyledger.Code
		msg            string
	}{
		{"GET", "/v1/usage", 400, keyledger.Invalid, "exactly one of key_id and owner"},
		{"GET", "/v1/usage?key_id=k1&owner=o", 400, keyledger.Invalid, "exactly one of key_id and owner"},
		{"GET", "/v1/usage?key_id=k1&from=yesterday", 400, keyledger.Invalid, "from must be an RFC 3339 time"},
		{"GET", "/v1/usage?key_id=k1&to=2026-13-01T00:00:00Z", 400, keyledger.Invalid, "to must be an RFC 3339 time"},
		{"GET", "/v1/usage?key_id=k1&from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", 400, keyledger.Invalid, "is after to"},
		{"GET", "/v1/usage?key_id=k1&interval=week", 400, keyledger.Invalid, "interval must be minute, hour or day"},
		{"GET", "/v1/usage?key_id=k1&interval=minute&from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", 400, keyledger.Invalid, "use a larger interval"},
		{"GET", "/v1/usage?key_id=bad%20key", 400, keyledger.Invalid, "key_id"},
		{"GET", "/v1/usage?key_id=k1&color=red", 400, keyledger.Invalid, `unknown parameter "color"`},
		{"GET", "/v1/usage?key_id=k1&key_id=k2", 400, keyledger.Invalid, "more than once"},
		{"GET", "/v1/quota?month=2026-01", 400, keyledger.Invalid, "owner is required"},
		{"GET", "/v1/quota?owner=o&month=2026-1", 400, keyledger.Invalid, "month must be YYYY-MM"},
		{"GET", "/v1/audit?type=KeyUsed", 400, keyledger.Invalid, "type must be KeyCreated or KeyRevoked"},
		{"GET", "/v1/audit?from=2026-01-01", 400, keyledger.Invalid, "from must be an RFC 3339 time"},
		{"GET", "/v1/audit?limit=0", 400, keyledger.Invalid, "limit must be"},
		{"GET", "/v1/alerts?rule=everything", 400, keyledger.Invalid, "rule must be one of"},
		{"GET", "/v1/alerts?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", 400, keyledger.Invalid, "is after to"},
		{"POST", "/v1/usage?key_id=k1", 405, keyledger.Invalid, "use GET"},
		{"GET", "/v1/nothing", 404, keyledger.NotFound, "no such endpoint"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.target, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var env keyledger.Envelope
		if err := json.Unmarshal(body, &env); err != nil {
			t.Errorf("%s %s: body %q is not an envelope", tc.method, tc.target, body)
			continue
		}
		if resp.StatusCode != tc.status || env.Error.Code != tc.code || !strings.Contains(env.Error.Message, tc.msg) {
			t.Errorf("%s %s = %d %+v, want %d %s %q", tc.method, tc.target, resp.StatusCode, env.Error, tc.status, tc.code, tc.msg)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: content type %q", tc.target, ct)
		}
	}
	// The client turns envelopes into *keyledger.Error.
	c := &Client{BaseURL: srv.URL, Token: "t"}
	_, err := c.Usage(context.Background(), UsageQuery{KeyID: "k1", Interval: "fortnight"})
	var kerr *keyledger.Error
	if !errors.As(err, &kerr) || kerr.Code != keyledger.Invalid || !strings.Contains(kerr.Message, "interval") {
		t.Errorf("client error = %#v", err)
	}
	if !errors.Is(err, keyledger.ErrInvalid) {
		t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
	}
	// An unreachable server is Unavailable.
	dead := &Client{BaseURL: "http://127.0.0.1:1"}
	if _, err := dead.Quota(context.Background(), "o", ""); keyledger.ErrorCode(err) != keyledger.Unavailable {
		t.Errorf("unreachable: %v", err)
	}
}

func TestClientRoundTrip(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	T := time.Date(2026, 4, 2, 10, 0, 0, 0, time.UTC)
	a := MustOpen(t, Config{JetStream: tj.js, Now: func() time.Time { return T }})
	MustStart(t, a)
	var gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		a.Handler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL + "/", Token: "sekret", HTTP: srv.Client()}

	publishKeyEvent(t, tj.js, created("key_c", "acme", keyledger.EnvLive, T.Add(-time.Hour)))
	publishKeyEvent(t, tj.js, revoked("key_c", "bob", "rotated", T.Add(-time.Minute)))
	var evs []*events.KeyUsed
	for i := range 10 {
		evs = append(evs, used("key_c", keyledger.EnvLive, keyledger.OutcomeValid, "10.3.0.1", T.Add(-30*time.Minute).Add(time.Duration(i)*time.Minute)))
	}
	evs = append(evs, used("key_c", keyledger.EnvLive, keyledger.OutcomeRevoked, "10.3.0.1", T.Add(-10*time.Second)))
	publishUsage(t, tj.js, evs...)
	waitIngested(t, a, 11, 30*time.Second)
	ctx := context.Background()
	waitFor(t, 10*time.Second, "audit", func() (bool, string) {
		evs, err := c.Audit(ctx, AuditQuery{KeyID: "key_c"})
		return err == nil && len(evs) == 2, ""
	})
	if gotAuth != "Bearer sekret" {
		t.Errorf("Authorization = %q", gotAuth)
	}
	pts, err := c.Usage(ctx, UsageQuery{KeyID: "key_c", Interval: Hour}) // default range: last 24h by the clock
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != 2 || pts[0].Outcome != "revoked" || pts[0].Count != 1 || pts[1].Outcome != "valid" || pts[1].Count != 10 ||
		!pts[0].Time.Equal(T.Add(-time.Hour)) {
		t.Errorf("usage = %+v", pts)
	}
	q, err := c.Quota(ctx, "acme", "")
	if err != nil || q.Used != 10 || q.Month != "2026-04" {
		t.Errorf("quota = %+v, %v", q, err)
	}
	if _, err := a.Detect(ctx, T); err != nil {
		t.Fatal(err)
	}
	al, err := c.Alerts(ctx, AlertQuery{Rule: RuleRevokedKeyUsed})
	if err != nil || len(al) != 1 || al[0].KeyID != "key_c" || al[0].Owner != "acme" || al[0].IP != "10.3.0.1" {
		t.Errorf("alerts = %+v, %v", al, err)
	}
	audit, err := c.Audit(ctx, AuditQuery{Type: "revoked"})
	if err != nil || len(audit) != 1 || audit[0].Reason != "rotated" || audit[0].Actor != "bob" {
		t.Errorf("audit = %+v, %v", audit, err)
	}
}
