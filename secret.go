package keyledger

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"io"
	"strings"
	"unsafe"

	"github.com/keyledger/keyledger/internal/sha256x"
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

// digit62 maps a base62 character to its value: a table decodes the
// checksum with no branch per character. Parse checks the charset first,
// so the 0xff of other bytes is never read.
var digit62 [256]byte

// crcTab[k][b] is the CRC32 (IEEE) register contribution of byte b followed
// by k zero bytes: the slicing-by-N tables for N = RandomLen. With them the
// checksum of a standard random part is 30 independent lookups instead of
// a chain of dependent steps: 11 ns instead of 20 for hash/crc32, whose
// carry-less-multiply path needs 64 bytes or more.
var crcTab [RandomLen][256]uint32

func init() {
	for i := range digit62 {
		digit62[i] = 0xff
	}
	for i := 0; i < len(base62); i++ {
		digit62[base62[i]] = byte(i)
	}
	crcTab[0] = *crc32.IEEETable
	for k := 1; k < RandomLen; k++ {
		for b := range crcTab[k] {
			c := crcTab[k-1][b]
			crcTab[k][b] = crcTab[0][byte(c)] ^ c>>8
		}
	}
}

// Format describes the keys of one deployment: their product prefix.
//
// Format stays comparable and its zero value keeps working (both prefixes
// empty, every checksum over the whole key): callers test for
// Format{} to apply DefaultFormat.
type Format struct {
	live string // "fsk_live_"
	test string // "fsk_test_"
	// liveCRC and testCRC are the CRC32 of live and test, so that Parse
	// checksums only the part after the prefix. In the zero Format they
	// are 0, which is the CRC32 of its empty prefixes.
	liveCRC, testCRC uint32
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
	f := Format{live: prefix + "_live_", test: prefix + "_test_"}
	f.liveCRC = crc32.ChecksumIEEE([]byte(f.live))
	f.testCRC = crc32.ChecksumIEEE([]byte(f.test))
	return f, nil
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
	var crc uint32
	switch {
	case strings.HasPrefix(s, f.live):
		env, crc = EnvLive, f.liveCRC
	case strings.HasPrefix(s, f.test):
		env, crc = EnvTest, f.testCRC
	default:
		return EnvUnknown, false
	}
	body := bytesOf(s[len(f.live):]) // both env prefixes have the same length
	if len(body) < RandomLen+ChecksumLen || len(body) > MaxRandomLen+ChecksumLen {
		return EnvUnknown, false
	}
	if !allBase62(body) {
		return EnvUnknown, false
	}
	n := len(body) - ChecksumLen
	if n == RandomLen {
		crc = crcRandom(crc, (*[RandomLen]byte)(body))
	} else {
		crc = crc32.Update(crc, crc32.IEEETable, body[:n])
	}
	if uint64(crc) != checksumValue((*[ChecksumLen]byte)(body[n:])) {
		return EnvUnknown, false
	}
	return env, true
}

// checksumValue decodes six base62 digits, most significant first. 62^6 >
// 2^32: the value is kept in 64 bits, or several spellings of the checksum
// would wrap onto the same 32-bit value and all pass. Two independent
// halves instead of a chain of six multiply-adds shorten the critical path.
func checksumValue(d *[ChecksumLen]byte) uint64 {
	hi := uint64(digit62[d[0]])*(62*62) + uint64(digit62[d[1]])*62 + uint64(digit62[d[2]])
	lo := uint64(digit62[d[3]])*(62*62) + uint64(digit62[d[4]])*62 + uint64(digit62[d[5]])
	return hi*(62*62*62) + lo
}

// crcRandom continues the CRC32 (IEEE) crc over a random part of standard
// length, as crc32.Update(crc, crc32.IEEETable, p[:]) does.
func crcRandom(crc uint32, p *[RandomLen]byte) uint32 {
	t := &crcTab
	// The register meets the first four bytes, as in slicing-by-8.
	x := ^crc ^ binary.LittleEndian.Uint32(p[:4])
	v := t[29][byte(x)] ^ t[28][byte(x>>8)] ^ t[27][byte(x>>16)] ^ t[26][x>>24] ^
		t[25][p[4]] ^ t[24][p[5]] ^ t[23][p[6]] ^ t[22][p[7]] ^
		t[21][p[8]] ^ t[20][p[9]] ^ t[19][p[10]] ^ t[18][p[11]] ^
		t[17][p[12]] ^ t[16][p[13]] ^ t[15][p[14]] ^ t[14][p[15]] ^
		t[13][p[16]] ^ t[12][p[17]] ^ t[11][p[18]] ^ t[10][p[19]] ^
		t[9][p[20]] ^ t[8][p[21]] ^ t[7][p[22]] ^ t[6][p[23]] ^
		t[5][p[24]] ^ t[4][p[25]] ^ t[3][p[26]] ^ t[2][p[27]] ^
		t[1][p[28]] ^ t[0][p[29]]
	return ^v
}

// allBase62 reports whether every byte of b, at least 8 bytes long, is in
// the base62 alphabet. It tests eight bytes per step (SWAR), which is
// cheaper than a table lookup per byte.
func allBase62(b []byte) bool {
	var bad uint64
	for i := 0; i+8 <= len(b); i += 8 {
		bad |= notBase62Bytes(binary.LittleEndian.Uint64(b[i:]))
	}
	// The last, possibly overlapping, word covers the remainder.
	bad |= notBase62Bytes(binary.LittleEndian.Uint64(b[len(b)-8:]))
	return bad == 0
}

// notBase62Bytes sets the high bit of every byte of x that is not base62.
// Each range test adds a constant to the low seven bits of every byte, so
// that bit 7 reports the comparison and no carry crosses into the next
// byte; setting bit 5 folds upper-case letters onto lower-case ones.
func notBase62Bytes(x uint64) uint64 {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	y := x &^ highs
	digit := (y + (0x80-'0')*ones) &^ (y + (0x7f-'9')*ones)
	z := y | 0x20*ones
	letter := (z + (0x80-'a')*ones) &^ (z + (0x7f-'z')*ones)
	return (x | ^(digit | letter)) & highs
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

// Hash is the SHA-256 of a secret: the only form in which a key is stored.
type Hash [sha256.Size]byte

// HashSecret hashes a secret without allocating. A key fits one SHA-256
// block, which sha256x compresses directly, skipping crypto/sha256's
// digest bookkeeping around it: about 75 ns instead of 105 for a key.
func HashSecret(s string) Hash {
	return sha256x.Sum256(bytesOf(s))
}

// bytesOf views s as a byte slice without copying. Copying into a stack
// buffer does not work here: the buffer escapes through crc32's assembly
// dispatch and costs an allocation per request. The callees only read the
// slice, so sharing the string's memory is safe.
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
