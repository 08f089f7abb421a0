package events_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
)

func TestSealOpen(t *testing.T) {
	ids := eventstest.NewIDs(1)
	ev := eventstest.Created(t, ids, "key_a")
	data, err := events.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	a := eventstest.MustSigner(t, "admin-a", 1)
	b := eventstest.MustSigner(t, "admin-b", 2)
	ring := eventstest.Keyring(t, a)
	sealed, err := a.Seal(data)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("good", func(t *testing.T) {
		got, signer, err := ring.Open(sealed, 7)
		if err != nil || signer != "admin-a" || !bytes.Equal(got, data) {
			t.Fatalf("Open = %q, %q, %v; want the event, admin-a", got, signer, err)
		}
		if !bytes.Equal(events.Unseal(sealed), data) {
			t.Fatalf("Unseal = %q", events.Unseal(sealed))
		}
	})

	byB, _ := b.Seal(data)
	tampered := bytes.Replace(sealed, []byte(`"key_a"`), []byte(`"key_b"`), 1)
	for _, tc := range []struct {
		name string
		msg  []byte
		want error
	}{
		{"unsigned", data, events.ErrUnsigned},
		{"unknown signer", byB, events.ErrUnknownSigner},
		{"altered event", tampered, events.ErrBadSignature},
		{"signature stripped to a blank line", append(append([]byte{}, data...), "\n\n"...), events.ErrUnsigned},
		{"garbage", []byte("\x00\x01"), events.ErrMalformedEnvelope},
		{"empty", nil, events.ErrMalformedEnvelope},
		{"signed non-event", mustSealText(t, "hello\n"), events.ErrMalformedEnvelope},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := ring.Open(tc.msg, 7); !errors.Is(err, tc.want) {
				t.Fatalf("Open err = %v, want %v", err, tc.want)
			}
		})
	}

	t.Run("unsigned adopted only through the given sequence", func(t *testing.T) {
		r := eventstest.Keyring(t, a)
		r.TrustUnsignedThrough(5)
		if _, signer, err := r.Open(data, 5); err != nil || signer != "" {
			t.Fatalf("seq 5: %q, %v", signer, err)
		}
		if _, _, err := r.Open(data, 6); !errors.Is(err, events.ErrUnsigned) {
			t.Fatalf("seq 6: %v, want ErrUnsigned", err)
		}
	})

	t.Run("retired key", func(t *testing.T) {
		r, err := events.ParseKeyring([]byte("# rotated\n" + a.VerifierKey + " until=10\n" + b.VerifierKey + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.Open(sealed, 10); err != nil {
			t.Fatalf("seq 10 (last the key signed): %v", err)
		}
		if _, _, err := r.Open(sealed, 11); !errors.Is(err, events.ErrSignerRetired) {
			t.Fatalf("seq 11: %v, want ErrSignerRetired", err)
		}
		if _, signer, err := r.Open(byB, 11); err != nil || signer != "admin-b" {
			t.Fatalf("new key at 11: %q %v", signer, err)
		}
		again, err := events.ParseKeyring(r.Marshal())
		if err != nil || len(again.Signers()) != 2 || again.Signers()[0].Until+again.Signers()[1].Until != 10 {
			t.Fatalf("Marshal round trip: %v %+v", err, again.Signers())
		}
	})
}

func TestTrustSealedBy(t *testing.T) {
	ids := eventstest.NewIDs(1)
	a := eventstest.MustSigner(t, "admin-a", 1)
	data, _ := events.Encode(eventstest.Created(t, ids, "key_a"))
	sealed, err := a.Seal(data)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("own writes open without a second check, with the same answer", func(t *testing.T) {
		r := eventstest.Keyring(t, a)
		r.TrustSealedBy(a.Signer)
		got, signer, err := r.Open(sealed, 3)
		if err != nil || signer != "admin-a" || !bytes.Equal(got, data) {
			t.Fatalf("Open = %q, %q, %v", got, signer, err)
		}
	})
	t.Run("a retired local key is still refused", func(t *testing.T) {
		r, err := events.ParseKeyring([]byte(a.VerifierKey + " until=2\n"))
		if err != nil {
			t.Fatal(err)
		}
		r.TrustSealedBy(a.Signer)
		if _, _, err := r.Open(sealed, 3); !errors.Is(err, events.ErrSignerRetired) {
			t.Fatalf("err %v, want ErrSignerRetired", err)
		}
	})
	t.Run("anything else is checked", func(t *testing.T) {
		r := eventstest.Keyring(t, a)
		r.TrustSealedBy(a.Signer)
		tampered := bytes.Replace(sealed, []byte(`"key_a"`), []byte(`"key_b"`), 1)
		if _, _, err := r.Open(tampered, 3); !errors.Is(err, events.ErrBadSignature) {
			t.Fatalf("err %v, want ErrBadSignature", err)
		}
	})
}

func mustSealText(t *testing.T, text string) []byte {
	t.Helper()
	s := eventstest.MustSigner(t, "admin-a", 1)
	// Seal refuses non-events, so build the note the way an attacker
	// holding the key would.
	msg, err := s.SealText(text)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

func TestParseKeyring(t *testing.T) {
	a := eventstest.MustSigner(t, "admin-a", 1)
	for _, tc := range []struct {
		name, text, wantErr string
	}{
		{"one key", a.VerifierKey + "\n", ""},
		{"comment and blank", "# x\n\n" + a.VerifierKey, ""},
		{"empty", "# nothing\n", "no key"},
		{"not a key", "hello", "not a verifier key"},
		{"private key", a.SigningKey, "not a verifier key"},
		{"bad option", a.VerifierKey + " from=3", "unknown option"},
		{"until zero", a.VerifierKey + " until=0", "unknown option"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := events.ParseKeyring([]byte(tc.text))
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "PRIVATE") {
				t.Fatalf("error repeats a private key: %v", err)
			}
		})
	}
}

// FuzzOpen feeds the envelope decoder arbitrary stored messages: it must
// never panic, and must accept only what a trusted key signed.
func FuzzOpen(f *testing.F) {
	a := eventstest.MustSigner(f, "admin-a", 1)
	ring := eventstest.Keyring(f, a)
	ids := eventstest.NewIDs(1)
	data, _ := events.Encode(eventstest.Created(f, ids, "key_a"))
	sealed, _ := a.Seal(data)
	f.Add(sealed)
	f.Add(data)
	f.Add([]byte("{}\n\n\u2014 admin-a AAAAAAA=\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		ev, _, err := ring.Open(msg, 1)
		if err != nil {
			if ev != nil {
				t.Fatal("event returned with an error")
			}
			return
		}
		// Whatever opened must be exactly what a was asked to sign.
		again, err := a.Seal(ev)
		if err != nil || !bytes.HasPrefix(msg, ev) || !bytes.Contains(msg, again[len(ev)+1:]) {
			t.Fatalf("opened %q from %q, which the key did not sign", ev, msg)
		}
	})
}
