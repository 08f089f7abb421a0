package github_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/keyledger/keyledger/github"
	"github.com/keyledger/keyledger/github/githubtest"
)

func TestVerify(t *testing.T) {
	gh := githubtest.NewSigner(t, "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c")
	other := githubtest.NewSigner(t, "other")
	keys, err := github.ParseKeys(gh.File)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`[{"token":"fsk_live_x","type":"keyledger_live_key","url":"https://github.com/o/r/blob/abc/x.go","source":"content"}]`)
	sig := gh.Sign(t, body)
	var v any
	json.Unmarshal(body, &v)
	reserialized, _ := json.MarshalIndent(v, "", " ")
	for _, tc := range []struct {
		name       string
		body       []byte
		keyID, sig string
		want       error
	}{
		{"valid", body, gh.ID, sig, nil},
		{"attack: wrong key id", body, "not-a-key", sig, github.ErrUnknownKey},
		{"attack: signed by another key", body, gh.ID, other.Sign(t, body), github.ErrBadSignature},
		{"attack: tampered body", bytes.Replace(body, []byte("x.go"), []byte("y.go"), 1), gh.ID, sig, github.ErrBadSignature},
		{"attack: re-serialized JSON", reserialized, gh.ID, sig, github.ErrBadSignature},
		{"attack: no signature", body, gh.ID, "", github.ErrUnsigned},
		{"attack: no key id", body, "", sig, github.ErrUnsigned},
		{"attack: signature not base64", body, gh.ID, "%%%", github.ErrBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := keys.Verify(tc.body, tc.keyID, tc.sig); !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseKeys(t *testing.T) {
	for _, tc := range []struct{ name, file string }{
		{"not JSON", "nope"},
		{"no keys", `{"public_keys":[]}`},
		{"not PEM", `{"public_keys":[{"key_identifier":"a","key":"abc"}]}`},
		{"no id", `{"public_keys":[{"key":"-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := github.ParseKeys([]byte(tc.file)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func FuzzDecodeReport(f *testing.F) {
	f.Add([]byte(`[{"token":"fsk_live_x","type":"t","url":"u","source":"content"}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"token":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := github.DecodeReport(b)
		if err == nil && len(ms) > github.MaxMatches {
			t.Fatalf("%d matches accepted", len(ms))
		}
	})
}
