package keyledger_test

import (
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

func TestOutcome_String(t *testing.T) {
	// The names are a wire format (KeyUsed events, metrics, ClickHouse):
	// pinned here so that a rename is a deliberate, visible change.
	want := []string{"valid", "malformed", "unknown", "revoked", "env_mismatch", "expired", "forbidden", "rate_limited", "unavailable", "disabled", "ip_not_allowed", "quota_exceeded", "credits_exhausted"}
	all := keyledger.Outcomes()
	if len(all) != len(want) {
		t.Fatalf("Outcomes() has %d outcomes, want %d", len(all), len(want))
	}
	seen := map[string]bool{}
	for i, o := range all {
		if o != keyledger.Outcome(i) {
			t.Errorf("Outcomes()[%d] = %d", i, o)
		}
		s := o.String()
		if s != want[i] {
			t.Errorf("Outcome(%d).String() = %q, want %q", i, s, want[i])
		}
		if seen[s] {
			t.Errorf("name %q used twice", s)
		}
		seen[s] = true
		got, ok := keyledger.ParseOutcome(s)
		if !ok || got != o {
			t.Errorf("ParseOutcome(%q) = %d, %v; want %d, true", s, got, ok, o)
		}
	}
	if keyledger.OutcomeValid != 0 || keyledger.OutcomeCreditsExhausted != keyledger.Outcome(len(want)-1) {
		t.Errorf("outcome constants moved: valid %d, credits_exhausted %d", keyledger.OutcomeValid, keyledger.OutcomeCreditsExhausted)
	}
	for _, o := range []keyledger.Outcome{keyledger.Outcome(len(want)), 200, 255} {
		if got := o.String(); got != "invalid" {
			t.Errorf("Outcome(%d).String() = %q, want invalid", o, got)
		}
	}
}

func TestParseOutcome(t *testing.T) {
	for _, s := range []string{"", "invalid", "Valid", "VALID", " valid", "valid ", "rate-limited", "ok"} {
		if o, ok := keyledger.ParseOutcome(s); ok || o != 0 {
			t.Errorf("ParseOutcome(%q) = %d, %v; want 0, false", s, o, ok)
		}
	}
}

func TestOutcome_Code(t *testing.T) {
	tests := []struct {
		o    keyledger.Outcome
		want keyledger.Code
	}{
		{keyledger.OutcomeValid, ""},
		{keyledger.OutcomeMalformed, keyledger.Unauthorized},
		{keyledger.OutcomeUnknown, keyledger.Unauthorized},
		{keyledger.OutcomeRevoked, keyledger.Unauthorized},
		{keyledger.OutcomeEnvMismatch, keyledger.Unauthorized},
		{keyledger.OutcomeExpired, keyledger.Unauthorized},
		{keyledger.OutcomeForbidden, keyledger.Forbidden},
		{keyledger.OutcomeRateLimited, keyledger.RateLimited},
		{keyledger.OutcomeUnavailable, keyledger.Unavailable},
		{keyledger.OutcomeDisabled, keyledger.Unauthorized},
		{keyledger.OutcomeIPNotAllowed, keyledger.Forbidden},
		{keyledger.OutcomeQuotaExceeded, keyledger.RateLimited},
		{keyledger.OutcomeCreditsExhausted, keyledger.RateLimited},
	}
	if len(tests) != len(keyledger.Outcomes()) {
		t.Fatalf("table covers %d outcomes of %d", len(tests), len(keyledger.Outcomes()))
	}
	for _, tt := range tests {
		if got := tt.o.Code(); got != tt.want {
			t.Errorf("%s.Code() = %q, want %q", tt.o, got, tt.want)
		}
	}
}
