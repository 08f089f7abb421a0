package eventstest

import (
	mrand "math/rand/v2"
	"testing"

	"github.com/keyledger/keyledger/events"
	"golang.org/x/mod/sumdb/note"
)

// Signer is a signing key for tests, with both its encodings.
type Signer struct {
	*events.Signer
	SigningKey  string // PRIVATE+KEY+…
	VerifierKey string // name+hash+…
}

// MustSigner returns a signing key named name drawn from a seeded source:
// the same seed gives the same key in every run.
func MustSigner(tb testing.TB, name string, seed uint64) *Signer {
	tb.Helper()
	var s [32]byte
	s[0] = byte(seed)
	s[1] = byte(seed >> 8)
	skey, vkey, err := events.GenerateSigningKey(mrand.NewChaCha8(s), name)
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := events.NewSigner(skey)
	if err != nil {
		tb.Fatal(err)
	}
	return &Signer{Signer: signer, SigningKey: skey, VerifierKey: vkey}
}

// SealText signs arbitrary text as a note, the way a holder of the key
// could: Seal itself refuses anything but an encoded event.
func (s *Signer) SealText(text string) ([]byte, error) {
	ns, err := note.NewSigner(s.SigningKey)
	if err != nil {
		return nil, err
	}
	return note.Sign(&note.Note{Text: text}, ns)
}

// MustSeal encodes and signs ev.
func (s *Signer) MustSeal(tb testing.TB, ev events.Event) []byte {
	tb.Helper()
	data, err := events.Encode(ev)
	if err != nil {
		tb.Fatal(err)
	}
	sealed, err := s.Seal(data)
	if err != nil {
		tb.Fatal(err)
	}
	return sealed
}

// Keyring returns a keyring trusting the given signers.
func Keyring(tb testing.TB, signers ...*Signer) *events.Keyring {
	tb.Helper()
	var keys []string
	for _, s := range signers {
		keys = append(keys, s.VerifierKey)
	}
	r, err := events.NewKeyring(keys...)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

// MustEncode encodes ev, unsigned.
func MustEncode(tb testing.TB, ev events.Event) []byte {
	tb.Helper()
	data, err := events.Encode(ev)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}
