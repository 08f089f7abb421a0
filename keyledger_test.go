package keyledger_test

import (
	"encoding/json"
	"errors"
	"math"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

func TestEnvironment_String(t *testing.T) {
	tests := []struct {
		env  keyledger.Environment
		want string
	}{
		{keyledger.EnvLive, "live"},
		{keyledger.EnvTest, "test"},
		{keyledger.EnvUnknown, ""},
		{7, ""},
	}
	for _, tt := range tests {
		if got := tt.env.String(); got != tt.want {
			t.Errorf("Environment(%d).String() = %q, want %q", tt.env, got, tt.want)
		}
	}
}

func TestParseEnvironment(t *testing.T) {
	tests := []struct {
		in   string
		want keyledger.Environment
	}{
		{"live", keyledger.EnvLive},
		{"test", keyledger.EnvTest},
		{"", keyledger.EnvUnknown},
		{"prod", keyledger.EnvUnknown},
		{"LIVE", keyledger.EnvUnknown},
		{"live ", keyledger.EnvUnknown},
		{"sandbox", keyledger.EnvUnknown},
	}
	for _, tt := range tests {
		got, err := keyledger.ParseEnvironment(tt.in)
		if got != tt.want || (err == nil) != (tt.want != keyledger.EnvUnknown) {
			t.Errorf("ParseEnvironment(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if err != nil && !errors.Is(err, keyledger.ErrInvalid) {
			t.Errorf("ParseEnvironment(%q): error %v is not ErrInvalid", tt.in, err)
		}
	}
}

func TestEnvironment_JSON(t *testing.T) {
	type doc struct {
		Env keyledger.Environment `json:"environment"`
	}
	for _, env := range []keyledger.Environment{keyledger.EnvLive, keyledger.EnvTest} {
		b, err := json.Marshal(doc{env})
		if err != nil || string(b) != `{"environment":"`+env.String()+`"}` {
			t.Fatalf("Marshal(%v) = %s, %v", env, b, err)
		}
		var d doc
		if err := json.Unmarshal(b, &d); err != nil || d.Env != env {
			t.Fatalf("Unmarshal(%s) = %v, %v", b, d.Env, err)
		}
	}
	if b, err := json.Marshal(doc{keyledger.EnvUnknown}); err == nil {
		t.Fatalf("Marshal(EnvUnknown) = %s; an unknown environment must not be encoded", b)
	}
	var d doc
	if err := json.Unmarshal([]byte(`{"environment":"prod"}`), &d); !errors.Is(err, keyledger.ErrInvalid) || d.Env != keyledger.EnvUnknown {
		t.Fatalf("Unmarshal(prod) = %v, %v", d.Env, err)
	}
}

func TestParseStatus(t *testing.T) {
	for _, s := range []keyledger.Status{keyledger.StatusActive, keyledger.StatusRevoked, keyledger.StatusExpired} {
		if got, err := keyledger.ParseStatus(string(s)); err != nil || got != s {
			t.Errorf("ParseStatus(%q) = %q, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "Active", "deleted", "revoked "} {
		if got, err := keyledger.ParseStatus(s); !errors.Is(err, keyledger.ErrInvalid) || got != "" {
			t.Errorf("ParseStatus(%q) = %q, %v; want ErrInvalid", s, got, err)
		}
	}
}

func TestRateLimit_Validate(t *testing.T) {
	tests := []struct {
		rl keyledger.RateLimit
		ok bool
	}{
		{keyledger.RateLimit{PerSecond: 1, Burst: 1}, true},
		{keyledger.RateLimit{PerSecond: 0.001, Burst: 1}, true},
		{keyledger.RateLimit{PerSecond: 1e9, Burst: 1e9}, true},
		{keyledger.RateLimit{PerSecond: 0, Burst: 1}, false},
		{keyledger.RateLimit{PerSecond: -1, Burst: 1}, false},
		{keyledger.RateLimit{PerSecond: math.NaN(), Burst: 1}, false},
		{keyledger.RateLimit{PerSecond: math.Inf(1), Burst: 1}, false},
		{keyledger.RateLimit{PerSecond: 1e9 + 1, Burst: 1}, false},
		{keyledger.RateLimit{PerSecond: 1, Burst: 0}, false},
		{keyledger.RateLimit{PerSecond: 1, Burst: -5}, false},
		{keyledger.RateLimit{PerSecond: 1, Burst: 1e9 + 1}, false},
	}
	for _, tt := range tests {
		err := tt.rl.Validate()
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, keyledger.ErrInvalid)) {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tt.rl, err, tt.ok)
		}
	}
}

func TestKey_StatusAt(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	before, after := now.Add(-time.Second), now.Add(time.Second)
	tests := []struct {
		name    string
		expires *time.Time
		revoked *time.Time
		want    keyledger.Status
	}{
		{"no expiry", nil, nil, keyledger.StatusActive},
		{"expires later", &after, nil, keyledger.StatusActive},
		{"expires now", &now, nil, keyledger.StatusExpired},
		{"expired", &before, nil, keyledger.StatusExpired},
		{"revoked", nil, &before, keyledger.StatusRevoked},
		{"revocation wins over expiry", &before, &before, keyledger.StatusRevoked},
		{"revoked, not yet expired", &after, &before, keyledger.StatusRevoked},
	}
	for _, tt := range tests {
		k := keyledger.Key{ExpiresAt: tt.expires, RevokedAt: tt.revoked}
		if got := k.StatusAt(now); got != tt.want {
			t.Errorf("%s: StatusAt = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestKey_JSONOmitsHash(t *testing.T) {
	k := keyledger.Key{ID: "key_1", Environment: keyledger.EnvLive, Hash: "deadbeef", Hint: "abcd"}
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if _, has := m["hash"]; has {
		t.Fatalf("Key JSON carries the hash: %s", b)
	}
	if m["hint"] != "abcd" || m["environment"] != "live" {
		t.Fatalf("Key JSON = %s", b)
	}
}
