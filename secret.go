package keyledger

import (
	"crypto/sha256"
	"encoding/hex"
	"hash/crc32"
	"io"
	"strings"
	"unsafe"
)

// Secret key format, after GitHub's token scheme:
//
//	<prefix>_<env>_<random><checksum>
//	fsk_live_3Xq…(30 base62 chars)…aB12cD
//
// random is RandomLen base62 characters from crypto/rand (≥ 178 bits) and
// checksum is the CRC32 (IEEE) of everything before it, as ChecksumLen
// base62 digits. The checksum lets a verifier refuse a mistyped or invented
// key before hashing or looking anything up, and lets secret scanners match
// keys with almost no false positives. "_" keeps a double-click selection
// whole.
const (
	RandomLen    = 30
	ChecksumLen  = 6
	MaxRandomLen = 64  // parsers accept longer random parts for future formats
	MaxSecretLen = 128 // anything longer is refused before any work
	// DefaultPrefix is the product prefix of keys.
	DefaultPrefix = "fsk"
)

const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// isBase62 is a lookup table; a switch costs more on the verify path.
var isBase62 [256]bool

func init() {
	for i := 0; i < len(base62); i++ {
		isBase62[base62[i]] = true
	}
}

// Format describes the keys of one deployment: their product prefix.
type Format struct {
	live string // "fsk_live_"
	test string // "fsk_test_"
}

// NewFormat returns the format for a product prefix such as "fsk". The prefix
// is 1–16 lower-case letters or digits.
func NewFormat(prefix string) (Format, error) {
	if len(prefix) < 1 || len(prefix) > 16 {
		return Format{}, Errorf(Invalid, "key prefix must be 1 to 16 characters")
	}
	for i := 0; i < len(prefix); i++ {
		c := prefix[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return Format{}, Errorf(Invalid, "key prefix must be lower-case letters and digits")
		}
	}
	return Format{live: prefix + "_live_", test: prefix + "_test_"}, nil
}

// DefaultFormat is the format with prefix "fsk".
var DefaultFormat, _ = NewFormat(DefaultPrefix)

// EnvPrefix returns the literal prefix of keys of env, e.g. "fsk_test_".
func (f Format) EnvPrefix(env Environment) string {
	if env == EnvTest {
		return f.test
	}
	return f.live
}

// New returns a fresh secret for env, reading randomness from r (crypto/rand
// in production; tests inject a deterministic reader).
func (f Format) New(env Environment, r io.Reader) (string, error) {
	if env != EnvLive && env != EnvTest {
		return "", Errorf(Invalid, "environment must be live or test")
	}
	p := f.EnvPrefix(env)
	b := make([]byte, 0, len(p)+RandomLen+ChecksumLen)
	b = append(b, p...)
	var buf [64]byte
	for len(b) < len(p)+RandomLen {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			return "", Wrap(Internal, err, "reading randomness")
		}
		for _, c := range buf {
			// 248 = 4*62: rejecting the top 8 values keeps every character
			// equally likely.
			if c < 248 && len(b) < len(p)+RandomLen {
				b = append(b, base62[c%62])
			}
		}
	}
	b = appendChecksum(b, crc32.ChecksumIEEE(b))
	return string(b), nil
}

func appendChecksum(b []byte, sum uint32) []byte {
	var d [ChecksumLen]byte
	for i := ChecksumLen - 1; i >= 0; i-- {
		d[i] = base62[sum%62]
		sum /= 62
	}
	return append(b, d[:]...)
}

// Parse checks the structure and checksum of a presented secret and returns
// its environment. It allocates nothing, so it is safe to run on every
// request before any lookup.
func (f Format) Parse(s string) (Environment, bool) {
	var env Environment
	switch {
	case strings.HasPrefix(s, f.live):
		env = EnvLive
	case strings.HasPrefix(s, f.test):
		env = EnvTest
	default:
		return EnvUnknown, false
	}
	body := s[len(f.live):] // both env prefixes have the same length
	if len(body) < RandomLen+ChecksumLen || len(body) > MaxRandomLen+ChecksumLen {
		return EnvUnknown, false
	}
	for i := 0; i < len(body); i++ {
		if !isBase62[body[i]] {
			return EnvUnknown, false
		}
	}
	n := len(s) - ChecksumLen
	// 62^6 > 2^32: accumulate in 64 bits, or several spellings of the
	// checksum would wrap onto the same 32-bit value and all pass.
	var want uint64
	for i := n; i < len(s); i++ {
		want = want*62 + uint64(digit62(s[i]))
	}
	if uint64(crc32.ChecksumIEEE(bytesOf(s[:n]))) != want {
		return EnvUnknown, false
	}
	return env, true
}

// Prefix returns the environment prefix of a presented key when it has one
// of this format's prefixes, else "". It is the only part of an unrecognised
// key that keyledger ever records.
func (f Format) Prefix(s string) string {
	switch {
	case strings.HasPrefix(s, f.live):
		return f.live
	case strings.HasPrefix(s, f.test):
		return f.test
	}
	return ""
}

func digit62(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'A' && c <= 'Z':
		return c - 'A' + 10
	default:
		return c - 'a' + 36
	}
}

// Hash is the SHA-256 of a secret: the only form in which a key is stored.
type Hash [sha256.Size]byte

// HashSecret hashes a secret without allocating.
func HashSecret(s string) Hash {
	return sha256.Sum256(bytesOf(s))
}

// bytesOf views s as a byte slice without copying. Copying into a stack
// buffer does not work here: the buffer escapes through crc32's and
// sha256's assembly dispatch and costs an allocation per request. The
// callees only read the slice, so sharing the string's memory is safe.
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// String returns the lower-case hex form used in events.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash parses the 64-character hex form of a hash.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 2*len(h) {
		return h, Errorf(Invalid, "hash must be 64 hex characters")
	}
	if _, err := hex.Decode(h[:], []byte(s)); err != nil {
		return h, Errorf(Invalid, "hash must be 64 hex characters")
	}
	return h, nil
}

// Hint returns the last four characters of a secret, shown in listings so
// people can tell keys apart without the secret.
func Hint(secret string) string {
	if len(secret) < 4 {
		return ""
	}
	return secret[len(secret)-4:]
}
