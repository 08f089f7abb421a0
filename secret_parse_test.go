package keyledger_test

import (
	"hash/crc32"
	mrand "math/rand/v2"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

// refParseFormat is Parse written as plainly as possible, for a format
// whose env prefixes are live and test: the oracle for the optimised
// Parse (precomputed prefix CRC, SWAR charset check, slicing tables).
func refParseFormat(live, test, s string) (keyledger.Environment, bool) {
	var env keyledger.Environment
	switch {
	case strings.HasPrefix(s, live):
		env = keyledger.EnvLive
	case strings.HasPrefix(s, test):
		env = keyledger.EnvTest
	default:
		return keyledger.EnvUnknown, false
	}
	body := s[len(live):]
	if len(body) < keyledger.RandomLen+keyledger.ChecksumLen || len(body) > keyledger.MaxRandomLen+keyledger.ChecksumLen {
		return keyledger.EnvUnknown, false
	}
	for i := 0; i < len(body); i++ {
		if strings.IndexByte(alphabet62, body[i]) < 0 {
			return keyledger.EnvUnknown, false
		}
	}
	n := len(s) - keyledger.ChecksumLen
	var want uint64
	for i := n; i < len(s); i++ {
		want = want*62 + uint64(strings.IndexByte(alphabet62, s[i]))
	}
	if uint64(crc32.ChecksumIEEE([]byte(s[:n]))) != want {
		return keyledger.EnvUnknown, false
	}
	return env, true
}

type parseFormat struct {
	name       string
	f          keyledger.Format
	live, test string
}

// parseFormats covers the shortest and longest product prefixes and the
// zero Format, whose prefixes are empty and whose checksum covers the
// whole key.
func parseFormats(t *testing.T) []parseFormat {
	fs := []parseFormat{{name: "zero"}}
	for _, p := range []string{"fsk", "a", "acme", "abcdefghijklmnop"} {
		f := MustFormat(t, p)
		fs = append(fs, parseFormat{p, f, f.EnvPrefix(keyledger.EnvLive), f.EnvPrefix(keyledger.EnvTest)})
	}
	return fs
}

func randomBase62(rng *mrand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet62[rng.IntN(len(alphabet62))]
	}
	return string(b)
}

// mutate applies one to three random edits of the kinds that distinguish
// parsers: any byte value anywhere, insertions, deletions, truncation,
// transpositions and checksum digits off by a little or by 2^32.
func mutate(rng *mrand.Rand, s string) string {
	b := []byte(s)
	for k := 1 + rng.IntN(3); k > 0; k-- {
		if len(b) == 0 {
			b = append(b, byte(rng.Uint32()))
			continue
		}
		i := rng.IntN(len(b))
		switch rng.IntN(7) {
		case 0:
			b[i] = byte(rng.Uint32())
		case 1:
			b[i] = alphabet62[rng.IntN(len(alphabet62))]
		case 2:
			b = append(b[:i], append([]byte{alphabet62[rng.IntN(len(alphabet62))]}, b[i:]...)...)
		case 3:
			b = append(b[:i], b[i+1:]...)
		case 4:
			b = b[:i]
		case 5:
			if i+1 < len(b) {
				b[i], b[i+1] = b[i+1], b[i]
			}
		case 6:
			// Re-spell the checksum as another 64-bit value near it.
			if len(b) >= keyledger.ChecksumLen {
				n := len(b) - keyledger.ChecksumLen
				sum := uint64(crc32.ChecksumIEEE(b[:n]))
				if rng.IntN(2) == 0 {
					sum += 1 << 32
				} else {
					sum ^= 1 << rng.IntN(32)
				}
				for j := len(b) - 1; j >= n; j-- {
					b[j] = alphabet62[sum%62]
					sum /= 62
				}
			}
		}
	}
	return string(b)
}

// TestFormat_ParseMatchesReference compares Parse with refParseFormat on
// valid keys of every accepted length, their mutations and random strings.
func TestFormat_ParseMatchesReference(t *testing.T) {
	rng := mrand.New(mrand.NewChaCha8([32]byte{'r', 'e', 'f'}))
	for _, pf := range parseFormats(t) {
		t.Run(pf.name, func(t *testing.T) {
			accepted := 0
			check := func(s string) {
				t.Helper()
				env, ok := pf.f.Parse(s)
				renv, rok := refParseFormat(pf.live, pf.test, s)
				if ok != rok || env != renv {
					t.Fatalf("Parse(%q) = %v, %v; reference says %v, %v", s, env, ok, renv, rok)
				}
				if ok {
					accepted++
				}
			}
			for range 20000 {
				prefix := pf.live
				if rng.IntN(2) == 0 {
					prefix = pf.test
				}
				n := keyledger.RandomLen
				if rng.IntN(4) == 0 {
					n = keyledger.RandomLen - 2 + rng.IntN(keyledger.MaxRandomLen-keyledger.RandomLen+5)
				}
				key := withChecksum(prefix + randomBase62(rng, n))
				check(key)
				check(mutate(rng, key))
				check(randomBase62(rng, rng.IntN(90)))
			}
			if accepted < 10000 {
				t.Fatalf("only %d inputs accepted: the test hardly exercises the accepting path", accepted)
			}
		})
	}
}

// TestFormat_ParseEveryByte puts every byte value at every position of
// valid keys, including positions in the prefix and checksum.
func TestFormat_ParseEveryByte(t *testing.T) {
	rng := mrand.New(mrand.NewChaCha8([32]byte{'b', 'y', 't', 'e'}))
	for _, pf := range parseFormats(t) {
		for _, n := range []int{keyledger.RandomLen, keyledger.RandomLen + 1, keyledger.MaxRandomLen} {
			key := []byte(withChecksum(pf.test + randomBase62(rng, n)))
			for i := range key {
				orig := key[i]
				for v := range 256 {
					key[i] = byte(v)
					s := string(key)
					env, ok := pf.f.Parse(s)
					renv, rok := refParseFormat(pf.live, pf.test, s)
					if ok != rok || env != renv {
						t.Fatalf("%s: Parse(%q) = %v, %v; reference says %v, %v", pf.name, s, env, ok, renv, rok)
					}
				}
				key[i] = orig
			}
		}
	}
}

// TestFormat_Comparable guards the Format{} test callers use to apply
// DefaultFormat: precomputed state must not make equal formats unequal.
func TestFormat_Comparable(t *testing.T) {
	if MustFormat(t, keyledger.DefaultPrefix) != keyledger.DefaultFormat {
		t.Fatal("NewFormat(DefaultPrefix) != DefaultFormat")
	}
	if (keyledger.Format{}) == keyledger.DefaultFormat {
		t.Fatal("DefaultFormat equals the zero Format")
	}
	if MustFormat(t, "acme") == keyledger.DefaultFormat {
		t.Fatal("formats of different prefixes are equal")
	}
}
