package keyledger_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/crc32"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	keyledger "github.com/keyledger/keyledger"
)

const alphabet62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// Golden keys whose checksums were computed outside Go (Python's zlib.crc32
// and a base62 encoder). Keys already issued must stay valid forever, so a
// change of the checksum algorithm or alphabet has to break these.
var goldenKeys = []struct {
	prefix, key string
	env         keyledger.Environment
}{
	{"fsk", "fsk_live_abcdefghijklmnopqrstuvwxyz01231UmKUD", keyledger.EnvLive},
	{"fsk", "fsk_test_ABCDEFGHIJKLMNOPQRSTUVWXYZ987638Oq4p", keyledger.EnvTest},
	{"acme", "acme_live_0000000000000000000000000000001vLmYT", keyledger.EnvLive},
}

// checksum62 re-derives a key's checksum independently of the package: the
// CRC32 (IEEE) of s as exactly six base62 digits, most significant first.
func checksum62(s string) string {
	sum := crc32.ChecksumIEEE([]byte(s))
	var d [keyledger.ChecksumLen]byte
	for i := len(d) - 1; i >= 0; i-- {
		d[i] = alphabet62[sum%62]
		sum /= 62
	}
	return string(d[:])
}

// withChecksum appends the correct checksum to s, so that a test can make a
// key wrong in exactly one other respect.
func withChecksum(s string) string { return s + checksum62(s) }

// refParse is an independent reference implementation of Format.Parse for
// the prefix "fsk".
func refParse(s string) (keyledger.Environment, bool) {
	var env keyledger.Environment
	switch {
	case strings.HasPrefix(s, "fsk_live_"):
		env = keyledger.EnvLive
	case strings.HasPrefix(s, "fsk_test_"):
		env = keyledger.EnvTest
	default:
		return keyledger.EnvUnknown, false
	}
	body := s[len("fsk_live_"):]
	if len(body) < keyledger.RandomLen+keyledger.ChecksumLen || len(body) > keyledger.MaxRandomLen+keyledger.ChecksumLen {
		return keyledger.EnvUnknown, false
	}
	for _, c := range []byte(body) {
		if strings.IndexByte(alphabet62, c) < 0 {
			return keyledger.EnvUnknown, false
		}
	}
	n := len(s) - keyledger.ChecksumLen
	if checksum62(s[:n]) != s[n:] {
		return keyledger.EnvUnknown, false
	}
	return env, true
}

// seededReader returns a deterministic randomness source.
func seededReader(seed byte) *mrand.ChaCha8 {
	return mrand.NewChaCha8([32]byte{seed, 'k', 'e', 'y'})
}

// MustNewKey returns a fresh key of format f drawn from r.
func MustNewKey(tb testing.TB, f keyledger.Format, env keyledger.Environment, r interface{ Read([]byte) (int, error) }) string {
	tb.Helper()
	k, err := f.New(env, r)
	if err != nil {
		tb.Fatalf("New(%v): %v", env, err)
	}
	return k
}

// MustFormat returns the format of prefix.
func MustFormat(tb testing.TB, prefix string) keyledger.Format {
	tb.Helper()
	f, err := keyledger.NewFormat(prefix)
	if err != nil {
		tb.Fatalf("NewFormat(%q): %v", prefix, err)
	}
	return f
}

func assertKeyShape(tb testing.TB, f keyledger.Format, env keyledger.Environment, key string) {
	tb.Helper()
	p := f.EnvPrefix(env)
	if !strings.HasPrefix(key, p) {
		tb.Fatalf("key %q lacks prefix %q", key, p)
	}
	body := key[len(p):]
	if len(body) != keyledger.RandomLen+keyledger.ChecksumLen {
		tb.Fatalf("key %q: body has %d characters, want %d", key, len(body), keyledger.RandomLen+keyledger.ChecksumLen)
	}
	for i := 0; i < len(body); i++ {
		if strings.IndexByte(alphabet62, body[i]) < 0 {
			tb.Fatalf("key %q: non-base62 byte %q at %d", key, body[i], len(p)+i)
		}
	}
	n := len(key) - keyledger.ChecksumLen
	if got, want := key[n:], checksum62(key[:n]); got != want {
		tb.Fatalf("key %q: checksum %q, want %q", key, got, want)
	}
}

func TestFormat_New(t *testing.T) {
	formats := []struct {
		name string
		f    keyledger.Format
	}{
		{"fsk", keyledger.DefaultFormat},
		{"acme", MustFormat(t, "acme")},
	}
	for _, ft := range formats {
		for _, env := range []keyledger.Environment{keyledger.EnvLive, keyledger.EnvTest} {
			t.Run(ft.name+"_"+env.String()+"_seeded", func(t *testing.T) {
				r := seededReader(1)
				seen := map[string]bool{}
				for range 200 {
					k := MustNewKey(t, ft.f, env, r)
					assertKeyShape(t, ft.f, env, k)
					if seen[k] {
						t.Fatalf("duplicate key %q", k)
					}
					seen[k] = true
					got, ok := ft.f.Parse(k)
					if !ok || got != env {
						t.Fatalf("Parse(%q) = %v, %v; want %v, true", k, got, ok, env)
					}
				}
			})
			t.Run(ft.name+"_"+env.String()+"_crypto_rand", func(t *testing.T) {
				for range 50 {
					k := MustNewKey(t, ft.f, env, rand.Reader)
					assertKeyShape(t, ft.f, env, k)
					if got, ok := ft.f.Parse(k); !ok || got != env {
						t.Fatalf("Parse(%q) = %v, %v; want %v, true", k, got, ok, env)
					}
				}
			})
		}
	}
}

func TestFormat_NewDeterministic(t *testing.T) {
	a := MustNewKey(t, keyledger.DefaultFormat, keyledger.EnvLive, seededReader(7))
	b := MustNewKey(t, keyledger.DefaultFormat, keyledger.EnvLive, seededReader(7))
	c := MustNewKey(t, keyledger.DefaultFormat, keyledger.EnvLive, seededReader(8))
	if a != b {
		t.Fatalf("same seed gave %q and %q", a, b)
	}
	if a == c {
		t.Fatalf("different seeds gave the same key %q", a)
	}
}

func TestFormat_NewErrors(t *testing.T) {
	t.Run("unknown environment", func(t *testing.T) {
		for _, env := range []keyledger.Environment{keyledger.EnvUnknown, 3, 255} {
			k, err := keyledger.DefaultFormat.New(env, seededReader(1))
			if !errors.Is(err, keyledger.ErrInvalid) || k != "" {
				t.Fatalf("New(%d) = %q, %v; want ErrInvalid", env, k, err)
			}
		}
	})
	t.Run("failing reader", func(t *testing.T) {
		cause := errors.New("entropy pool on fire")
		k, err := keyledger.DefaultFormat.New(keyledger.EnvLive, iotest.ErrReader(cause))
		if k != "" || !errors.Is(err, keyledger.ErrInternal) || !errors.Is(err, cause) {
			t.Fatalf("New = %q, %v; want internal error wrapping the cause", k, err)
		}
		if strings.Contains(keyledger.ErrorMessage(err), "fire") {
			t.Fatalf("caller-safe message %q leaks the cause", keyledger.ErrorMessage(err))
		}
	})
	t.Run("short reads", func(t *testing.T) {
		k := MustNewKey(t, keyledger.DefaultFormat, keyledger.EnvTest, iotest.OneByteReader(seededReader(3)))
		assertKeyShape(t, keyledger.DefaultFormat, keyledger.EnvTest, k)
	})
}

// TestFormat_NewDistribution checks that every base62 character appears and
// none is favoured: without rejection sampling, '0'…'7' would come up 25%
// more often than the rest (256 = 4·62 + 8).
func TestFormat_NewDistribution(t *testing.T) {
	const keys = 20000
	var counts [256]int
	r := seededReader(42)
	p := len(keyledger.DefaultFormat.EnvPrefix(keyledger.EnvLive))
	for range keys {
		k := MustNewKey(t, keyledger.DefaultFormat, keyledger.EnvLive, r)
		for _, c := range []byte(k[p : p+keyledger.RandomLen]) {
			counts[c]++
		}
	}
	want := float64(keys*keyledger.RandomLen) / 62 // ≈ 9677, σ ≈ 97
	for i := 0; i < len(alphabet62); i++ {
		c := alphabet62[i]
		got := float64(counts[c])
		if got < 0.9*want || got > 1.1*want {
			t.Errorf("character %q appeared %v times, want %.0f ± 10%%", c, got, want)
		}
		counts[c] = 0
	}
	for c, n := range counts {
		if n != 0 {
			t.Errorf("non-base62 byte %q appeared %d times", byte(c), n)
		}
	}
}

func TestFormat_ParseGolden(t *testing.T) {
	for _, g := range goldenKeys {
		f := MustFormat(t, g.prefix)
		if env, ok := f.Parse(g.key); !ok || env != g.env {
			t.Errorf("%s.Parse(%q) = %v, %v; want %v, true", g.prefix, g.key, env, ok, g.env)
		}
		if checksum62(g.key[:len(g.key)-6]) != g.key[len(g.key)-6:] {
			t.Errorf("test helper checksum62 disagrees with golden key %q", g.key)
		}
	}
}

func TestFormat_Parse(t *testing.T) {
	f := keyledger.DefaultFormat
	live := MustNewKey(t, f, keyledger.EnvLive, seededReader(9))
	test := MustNewKey(t, f, keyledger.EnvTest, seededReader(9))
	random := live[len("fsk_live_") : len(live)-keyledger.ChecksumLen]
	acme := MustNewKey(t, MustFormat(t, "acme"), keyledger.EnvLive, seededReader(9))

	// nonCanonical encodes the same CRC32 plus 2^32 as six base62 digits:
	// the same checksum modulo 2^32 but not the digits New writes.
	nonCanonical := func(s string) string {
		sum := uint64(crc32.ChecksumIEEE([]byte(s))) + 1<<32
		var d [6]byte
		for i := 5; i >= 0; i-- {
			d[i] = alphabet62[sum%62]
			sum /= 62
		}
		return s + string(d[:])
	}

	tests := []struct {
		name string
		in   string
		env  keyledger.Environment // EnvUnknown: must be rejected
	}{
		{"live", live, keyledger.EnvLive},
		{"test", test, keyledger.EnvTest},
		{"longest random part", withChecksum("fsk_live_" + strings.Repeat("z", keyledger.MaxRandomLen)), keyledger.EnvLive},
		{"random part of 31", withChecksum("fsk_test_" + random + "Q"), keyledger.EnvTest},

		{"empty", "", 0},
		{"prefix only", "fsk_live_", 0},
		{"prefix and checksum only", withChecksum("fsk_live_"), 0},
		{"wrong prefix", withChecksum("fsx_live_" + random), 0},
		{"other product prefix", acme, 0},
		{"prefix without underscore", withChecksum("fsklive_" + random), 0},
		{"upper-case prefix", withChecksum("FSK_live_" + random), 0},
		{"upper-case env", withChecksum("fsk_LIVE_" + random), 0},
		{"wrong env word", withChecksum("fsk_prod_" + random), 0},
		{"env word sandbox", withChecksum("fsk_sandbox_" + random), 0},
		{"too short", withChecksum("fsk_live_" + random[1:]), 0},
		{"too long", withChecksum("fsk_live_" + strings.Repeat("z", keyledger.MaxRandomLen+1)), 0},
		{"far too long", withChecksum("fsk_live_" + strings.Repeat("a", 10000)), 0},
		{"dash", withChecksum("fsk_live_" + random[:10] + "-" + random[11:]), 0},
		{"underscore", withChecksum("fsk_live_" + random[:10] + "_" + random[11:]), 0},
		{"plus", withChecksum("fsk_live_" + random[:29] + "+"), 0},
		{"space", withChecksum("fsk_live_ " + random[1:]), 0},
		{"NUL", withChecksum("fsk_live_" + random[:15] + "\x00" + random[16:]), 0},
		{"unicode é", withChecksum("fsk_live_" + random[:28] + "é"), 0},
		{"unicode fullwidth digit", withChecksum("fsk_live_" + random[:27] + "１"), 0},
		{"invalid UTF-8", withChecksum("fsk_live_" + random[:29] + "\xff"), 0},
		{"non-base62 in checksum", live[:len(live)-1] + "=", 0},
		{"leading space", " " + live, 0},
		{"trailing newline", live + "\n", 0},
		{"doubled", live + live, 0},
		{"checksum of the other env", "fsk_test_" + live[len("fsk_live_"):], 0},
		{"checksum of the other env (test→live)", "fsk_live_" + test[len("fsk_test_"):], 0},
		{"checksum missing", live[:len(live)-keyledger.ChecksumLen], 0},
		{"checksum not canonical (CRC+2^32)", nonCanonical("fsk_live_" + random), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, ok := f.Parse(tt.in)
			if ok != (tt.env != keyledger.EnvUnknown) || env != tt.env {
				t.Fatalf("Parse(%q) = %v, %v; want %v, %v", tt.in, env, ok, tt.env, tt.env != keyledger.EnvUnknown)
			}
			if renv, rok := refParse(tt.in); rok != ok || renv != env {
				t.Fatalf("reference parser says %v, %v for %q", renv, rok, tt.in)
			}
		})
	}
}

// TestFormat_ParseFlippedChar changes every character of valid keys, to every
// other base62 character (or, in the prefix, a few others): CRC32 detects
// every single-character change.
func TestFormat_ParseFlippedChar(t *testing.T) {
	f := keyledger.DefaultFormat
	r := seededReader(11)
	for _, env := range []keyledger.Environment{keyledger.EnvLive, keyledger.EnvTest} {
		for range 5 {
			k := MustNewKey(t, f, env, r)
			for i := 0; i < len(k); i++ {
				for _, c := range []byte(alphabet62 + "_-") {
					if c == k[i] {
						continue
					}
					bad := k[:i] + string(c) + k[i+1:]
					if got, ok := f.Parse(bad); ok {
						t.Fatalf("Parse(%q) (position %d of %q changed) = %v, true", bad, i, k, got)
					}
				}
			}
			// Swapping two adjacent different characters is a typo too.
			for i := len("fsk_live_"); i+1 < len(k); i++ {
				if k[i] == k[i+1] {
					continue
				}
				bad := k[:i] + string(k[i+1]) + string(k[i]) + k[i+2:]
				if _, ok := f.Parse(bad); ok {
					t.Fatalf("Parse(%q) (transposition at %d of %q) accepted", bad, i, k)
				}
			}
		}
	}
}

func TestFormat_Prefix(t *testing.T) {
	f := keyledger.DefaultFormat
	tests := []struct{ in, want string }{
		{"fsk_live_whatever", "fsk_live_"},
		{"fsk_test_", "fsk_test_"},
		{"fsk_prod_abc", ""},
		{"acme_live_abc", ""},
		{"", ""},
		{"fsk_liv", ""},
	}
	for _, tt := range tests {
		if got := f.Prefix(tt.in); got != tt.want {
			t.Errorf("Prefix(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestNewFormat(t *testing.T) {
	valid := []string{"fsk", "acme", "a", "x9", "0", "abcdefghijklmnop"}
	for _, p := range valid {
		t.Run("valid "+p, func(t *testing.T) {
			f := MustFormat(t, p)
			if got := f.EnvPrefix(keyledger.EnvLive); got != p+"_live_" {
				t.Fatalf("EnvPrefix(live) = %q", got)
			}
			if got := f.EnvPrefix(keyledger.EnvTest); got != p+"_test_" {
				t.Fatalf("EnvPrefix(test) = %q", got)
			}
			k := MustNewKey(t, f, keyledger.EnvTest, seededReader(5))
			assertKeyShape(t, f, keyledger.EnvTest, k)
			if env, ok := f.Parse(k); !ok || env != keyledger.EnvTest {
				t.Fatalf("Parse(%q) = %v, %v", k, env, ok)
			}
			if p != "fsk" {
				if _, ok := keyledger.DefaultFormat.Parse(k); ok {
					t.Fatalf("the fsk format accepted %q", k)
				}
				if _, ok := f.Parse(MustNewKey(t, keyledger.DefaultFormat, keyledger.EnvTest, seededReader(5))); ok {
					t.Fatalf("format %q accepted an fsk key", p)
				}
			}
		})
	}
	invalid := []string{"", "abcdefghijklmnopq", "ACME", "Acme", "ac_me", "ac-me", "ac me", " acme", "acme_", "acmé", "ａcme", "a.b", "a\x00"}
	for _, p := range invalid {
		t.Run("invalid "+p, func(t *testing.T) {
			f, err := keyledger.NewFormat(p)
			if !errors.Is(err, keyledger.ErrInvalid) {
				t.Fatalf("NewFormat(%q) = %v, %v; want ErrInvalid", p, f, err)
			}
		})
	}
}

func TestFormat_EnvPrefix(t *testing.T) {
	f := keyledger.DefaultFormat
	if got := f.EnvPrefix(keyledger.EnvLive); got != "fsk_live_" {
		t.Errorf("EnvPrefix(live) = %q", got)
	}
	if got := f.EnvPrefix(keyledger.EnvTest); got != "fsk_test_" {
		t.Errorf("EnvPrefix(test) = %q", got)
	}
}

func TestFormat_ParseAllocs(t *testing.T) {
	f := keyledger.DefaultFormat
	valid := MustNewKey(t, f, keyledger.EnvLive, seededReader(2))
	badSum := valid[:len(valid)-1] + "0"
	if valid == badSum {
		badSum = valid[:len(valid)-1] + "1"
	}
	for name, in := range map[string]string{
		"valid":        valid,
		"bad checksum": badSum,
		"wrong prefix": "ghp_" + valid[4:],
		"too long":     "fsk_live_" + strings.Repeat("a", 200),
	} {
		t.Run(name, func(t *testing.T) {
			var sink bool
			n := testing.AllocsPerRun(200, func() {
				_, ok := f.Parse(in)
				sink = sink != ok
			})
			if n != 0 {
				t.Fatalf("Parse(%s) makes %v allocations per call, want 0", name, n)
			}
		})
	}
}

func TestHashSecret(t *testing.T) {
	inputs := []string{
		"",
		"x",
		MustNewKey(t, keyledger.DefaultFormat, keyledger.EnvLive, seededReader(4)),
		strings.Repeat("k", keyledger.MaxSecretLen),
		strings.Repeat("k", keyledger.MaxSecretLen+1),
		strings.Repeat("\xff", 5000),
	}
	for _, s := range inputs {
		want := sha256.Sum256([]byte(s))
		got := keyledger.HashSecret(s)
		if got != keyledger.Hash(want) {
			t.Errorf("HashSecret(%d bytes) = %x, want %x", len(s), got, want)
		}
		if got.String() != hex.EncodeToString(want[:]) {
			t.Errorf("Hash.String() = %q, want %q", got.String(), hex.EncodeToString(want[:]))
		}
	}
	// A known answer, so that the test does not only compare sha256 with itself.
	if got := keyledger.HashSecret("abc").String(); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf(`HashSecret("abc") = %s`, got)
	}
}

func TestHashSecret_Allocs(t *testing.T) {
	for _, s := range []string{"", MustNewKey(t, keyledger.DefaultFormat, keyledger.EnvLive, seededReader(4)), strings.Repeat("k", keyledger.MaxSecretLen)} {
		var sink keyledger.Hash
		n := testing.AllocsPerRun(200, func() { sink = keyledger.HashSecret(s) })
		if n != 0 {
			t.Errorf("HashSecret(%d bytes) makes %v allocations, want 0", len(s), n)
		}
		_ = sink
	}
}

func TestParseHash(t *testing.T) {
	h := keyledger.HashSecret("fsk_live_x")
	lower := h.String()
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"lower-case", lower, true},
		{"upper-case", strings.ToUpper(lower), true},
		{"empty", "", false},
		{"63 characters", lower[:63], false},
		{"65 characters", lower + "0", false},
		{"non-hex", "g" + lower[1:], false},
		{"0x prefix", "0x" + lower[2:], false},
		{"space", " " + lower[1:], false},
		{"128 characters", lower + lower, false},
		{"unicode", "é" + lower[2:], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := keyledger.ParseHash(tt.in)
			if !tt.ok {
				if !errors.Is(err, keyledger.ErrInvalid) {
					t.Fatalf("ParseHash(%q) = %v, %v; want ErrInvalid", tt.in, got, err)
				}
				return
			}
			if err != nil || got != h {
				t.Fatalf("ParseHash(%q) = %v, %v; want %v", tt.in, got, err, h)
			}
			if got.String() != lower {
				t.Fatalf("String() = %q, want %q", got.String(), lower)
			}
		})
	}
}

func TestHint(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"abc", ""},
		{"abcd", "abcd"},
		{"fsk_live_abcdefghijklmnopqrstuvwxyz01231UmKUD", "mKUD"},
	}
	for _, tt := range tests {
		if got := keyledger.Hint(tt.in); got != tt.want {
			t.Errorf("Hint(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	r := seededReader(13)
	for _, env := range []keyledger.Environment{keyledger.EnvLive, keyledger.EnvTest} {
		k := MustNewKey(f, keyledger.DefaultFormat, env, r)
		f.Add(k)
		f.Add(k[:len(k)-1] + "x")
		f.Add(k[:20] + "é" + k[22:])
		f.Add(withChecksum(k[:len(k)-6] + "Z"))
	}
	for _, g := range goldenKeys {
		f.Add(g.key)
	}
	f.Add("")
	f.Add("fsk_live_")
	f.Add("fsk_prod_abcdefghijklmnopqrstuvwxyz01231UmKUD")
	f.Add(withChecksum("fsk_live_" + strings.Repeat("9", 64)))
	f.Add(withChecksum("fsk_live_" + strings.Repeat("9", 65)))
	f.Fuzz(func(t *testing.T, s string) {
		env, ok := keyledger.DefaultFormat.Parse(s)
		renv, rok := refParse(s)
		if ok != rok || env != renv {
			t.Fatalf("Parse(%q) = %v, %v; reference parser says %v, %v", s, env, ok, renv, rok)
		}
		if !ok {
			if env != keyledger.EnvUnknown {
				t.Fatalf("Parse(%q) refused the key but returned environment %v", s, env)
			}
			return
		}
		p := keyledger.DefaultFormat.EnvPrefix(env)
		if !strings.HasPrefix(s, p) || keyledger.DefaultFormat.Prefix(s) != p {
			t.Fatalf("accepted %q as %v without prefix %q", s, env, p)
		}
		for i := len(p); i < len(s); i++ {
			if strings.IndexByte(alphabet62, s[i]) < 0 {
				t.Fatalf("accepted %q with non-base62 byte at %d", s, i)
			}
		}
		n := len(s) - keyledger.ChecksumLen
		if checksum62(s[:n]) != s[n:] {
			t.Fatalf("accepted %q whose checksum does not recompute (%s)", s, checksum62(s[:n]))
		}
		if len(s) > keyledger.MaxSecretLen {
			t.Fatalf("accepted %d bytes, more than MaxSecretLen", len(s))
		}
	})
}

func BenchmarkParse(b *testing.B) {
	f := keyledger.DefaultFormat
	valid := MustNewKey(b, f, keyledger.EnvLive, seededReader(2))
	badSum := valid[:len(valid)-1] + "0"
	if badSum == valid {
		badSum = valid[:len(valid)-1] + "1"
	}
	for _, bc := range []struct{ name, in string }{
		{"valid", valid},
		{"bad_checksum", badSum},
		{"wrong_prefix", "ghp_" + valid[4:]},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				f.Parse(bc.in)
			}
		})
	}
}

func BenchmarkHashSecret(b *testing.B) {
	k := MustNewKey(b, keyledger.DefaultFormat, keyledger.EnvLive, seededReader(2))
	b.ReportAllocs()
	for b.Loop() {
		keyledger.HashSecret(k)
	}
}

func BenchmarkFormat_New(b *testing.B) {
	r := seededReader(2)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := keyledger.DefaultFormat.New(keyledger.EnvLive, r); err != nil {
			b.Fatal(err)
		}
	}
}
