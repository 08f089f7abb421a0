package keyledger_test

import (
	"strings"
	"testing"

	"github.com/keyledger/keyledger"
)

func TestFindSecret(t *testing.T) {
	key, err := keyledger.DefaultFormat.New(keyledger.EnvLive, strings.NewReader(strings.Repeat("k", 4096)))
	if err != nil {
		t.Fatal(err)
	}
	custom, _ := keyledger.NewFormat("acme")
	ckey, err := custom.New(keyledger.EnvTest, strings.NewReader(strings.Repeat("c", 4096)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, s string
		want    string // the token found; "" for none
	}{
		{"a valid key", key, key},
		{"a key in a path", "/v1/keys/" + key + "/events", key},
		{"a key in a query", "/v2/run?x=1&api_key=" + key + "&y=2", key},
		{"a bearer header value", "Bearer " + key, key},
		{"a mistyped key (bad checksum)", key[:len(key)-1] + "x", key[:len(key)-1] + "x"},
		{"a truncated key", key[:9+keyledger.MinSecretShapeLen], key[:9+keyledger.MinSecretShapeLen]},
		{"another product prefix", "/x/" + ckey, ckey},
		{"an imported key of the same scheme", "token=sk_live_51HxQmABCDEFGHIJKLMNOP", "sk_live_51HxQmABCDEFGHIJKLMNOP"},
		{"the prefix inside a longer word", "x_fsk_live_" + strings.Repeat("A", 20), "fsk_live_" + strings.Repeat("A", 20)},
		{"too short to be a secret", "fsk_live_" + strings.Repeat("A", keyledger.MinSecretShapeLen-1), ""},
		{"a word with the marker", "/runs/cache_test_run/logs", ""},
		{"the marker at the end", "fsk_live_", ""},
		{"a key id", "/v1/keys/key_01a2179f8fd078bdb9bb5b2a36010989", ""},
		{"another environment word", "fsk_prod_" + strings.Repeat("A", 30), ""},
		{"nothing", "", ""},
		{"underscores only", strings.Repeat("_", 100), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start, end, ok := keyledger.FindSecret(tc.s)
			got := ""
			if ok {
				got = tc.s[start:end]
			}
			if got != tc.want {
				t.Fatalf("FindSecret(%q) = %q, want %q", tc.s, got, tc.want)
			}
			if keyledger.LooksLikeSecret(tc.s) != (tc.want != "") {
				t.Fatalf("LooksLikeSecret(%q) = %v", tc.s, !ok)
			}
		})
	}
	t.Run("no allocation", func(t *testing.T) {
		path := "/api/workflows/42?page=3&sort=created_at_desc&filter=owner_test_x"
		if n := testing.AllocsPerRun(100, func() { keyledger.FindSecret(path) }); n != 0 {
			t.Fatalf("%v allocations", n)
		}
	})
}

// Whatever FindSecret reports lies within s, holds a marker and is itself
// found whole.
func FuzzFindSecret(f *testing.F) {
	f.Add("/v2/run?api_key=fsk_live_OdQTOCTFHcsMURTIbMJeubMBSmrlYD1tzeqP")
	f.Add("_live_AAAAAAAAAAAAAAAA")
	f.Add("a_test__live_AAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, s string) {
		start, end, ok := keyledger.FindSecret(s)
		if !ok {
			return
		}
		if start < 0 || end > len(s) || start >= end {
			t.Fatalf("bounds %d:%d of %d", start, end, len(s))
		}
		tok := s[start:end]
		if !strings.Contains(tok, "_live_") && !strings.Contains(tok, "_test_") {
			t.Fatalf("token %q has no marker", tok)
		}
		if s2, e2, ok := keyledger.FindSecret(tok); !ok || s2 != 0 || e2 != len(tok) {
			t.Fatalf("token %q not found whole: %d:%d %v", tok, s2, e2, ok)
		}
	})
}
