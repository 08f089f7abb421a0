package http_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/client"
	khttp "github.com/keyledger/keyledger/http"

	keyledger "github.com/keyledger/keyledger"
)

// mustOpenAnalytics opens analytics on a fresh database of the ClickHouse
// that make test started, with its tickers off, closed when the test ends.
func mustOpenAnalytics(tb testing.TB) *analytics.Analytics {
	tb.Helper()
	addr := analyticstest.Addr(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := analytics.Open(ctx, analytics.Config{
		DSN: analyticstest.DSN(addr, analyticstest.MustTempDatabase(tb, addr)), DetectInterval: -1, RetentionMonths: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		tb.Fatalf("analytics.Open: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a.Close(ctx)
	})
	return a
}

func TestHandlerValidation(t *testing.T) {
	t.Parallel()
	a := mustOpenAnalytics(t)
	srv := httptest.NewServer(khttp.NewAnalyticsHandler(a, slog.New(slog.NewTextHandler(io.Discard, nil))))
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
		{"GET", "/v1/audit?type=KeyUsed", 400, keyledger.Invalid, "type must be KeyCreated, KeyRolled, KeyRevoked, KeyUpdated, KeyDisabled, KeyEnabled, KeyLeakReported, PlanSet or OwnerSet"},
		{"GET", "/v1/audit?type=KeyRolled", 200, "", ""},
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
		var env khttp.Envelope
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
	c := &client.Client{BaseURL: srv.URL, Token: "t"}
	_, err := c.Usage(context.Background(), analytics.UsageQuery{KeyID: "k1", Interval: "fortnight"})
	var kerr *keyledger.Error
	if !errors.As(err, &kerr) || kerr.Code != keyledger.Invalid || !strings.Contains(kerr.Message, "interval") {
		t.Errorf("client error = %#v", err)
	}
	if !errors.Is(err, keyledger.ErrInvalid) {
		t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
	}
	// An unreachable server is Unavailable.
	dead := &client.Client{BaseURL: "http://127.0.0.1:1"}
	if _, err := dead.Quota(context.Background(), "o", ""); keyledger.ErrorCode(err) != keyledger.Unavailable {
		t.Errorf("unreachable: %v", err)
	}
}
