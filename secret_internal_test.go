package keyledger

import (
	"encoding/binary"
	"hash/crc32"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

// TestCrcRandom checks the slicing-by-30 tables against hash/crc32 for any
// register and any bytes, not only base62 ones.
func TestCrcRandom(t *testing.T) {
	rng := mrand.New(mrand.NewChaCha8([32]byte{'c', 'r', 'c'}))
	var p [RandomLen]byte
	for i := range 20000 {
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		crc := rng.Uint32()
		switch i {
		case 0:
			crc = 0
		case 1:
			crc = 0xffffffff
		}
		if got, want := crcRandom(crc, &p), crc32.Update(crc, crc32.IEEETable, p[:]); got != want {
			t.Fatalf("crcRandom(%#x, %x) = %#x, want %#x", crc, p, got, want)
		}
	}
}

// TestNotBase62Bytes tries every byte value in every lane of the word.
func TestNotBase62Bytes(t *testing.T) {
	for lane := range 8 {
		for v := range 256 {
			var w [8]byte
			for i := range w {
				w[i] = 'a'
			}
			w[lane] = byte(v)
			got := notBase62Bytes(binary.LittleEndian.Uint64(w[:]))
			var want uint64
			if strings.IndexByte(base62, byte(v)) < 0 {
				want = 0x80 << (8 * lane)
			}
			if got != want {
				t.Fatalf("notBase62Bytes with %#x in lane %d = %#x, want %#x", v, lane, got, want)
			}
		}
	}
}

func TestChecksumValue(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint64
	}{
		{"000000", 0},
		{"000001", 1},
		{"00000z", 61},
		{"000010", 62},
		{"100000", 62 * 62 * 62 * 62 * 62},
		{"zzzzzz", 62*62*62*62*62*62 - 1},
		{"4gfFC3", 1<<32 - 1},
	} {
		if got := checksumValue((*[ChecksumLen]byte)([]byte(tt.in))); got != tt.want {
			t.Errorf("checksumValue(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}
