package sha256x

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	mrand "math/rand/v2"
	"strconv"
	"testing"
)

// detected is what the package found at start-up, before any test forced
// the fallback.
var detected = useSHANI

// paths runs fn once per implementation this machine can run: the
// single-block fast path (when the CPU has it) and the crypto/sha256
// fallback, which every platform uses for long inputs.
func paths(t *testing.T, fn func(t *testing.T)) {
	t.Helper()
	for _, p := range []struct {
		name string
		fast bool
	}{{"fast", true}, {"fallback", false}} {
		t.Run(p.name, func(t *testing.T) {
			if p.fast && !detected {
				t.Skip("no SHA-NI path on this platform")
			}
			useSHANI = p.fast
			t.Cleanup(func() { useSHANI = detected })
			fn(t)
		})
	}
}

func check(t *testing.T, what string, p []byte) {
	t.Helper()
	orig := bytes.Clone(p)
	got := Sum256(p)
	if want := sha256.Sum256(orig); got != want {
		t.Fatalf("Sum256(%s, %d bytes) = %x, want %x", what, len(p), got, want)
	}
	if !bytes.Equal(p, orig) {
		t.Fatalf("Sum256(%s, %d bytes) modified its input", what, len(p))
	}
}

// TestSum256Lengths covers every length around the one-block limit (55)
// and several blocks beyond, so that both the padding and the hand-off to
// crypto/sha256 are exercised.
func TestSum256Lengths(t *testing.T) {
	paths(t, func(t *testing.T) {
		rng := mrand.New(mrand.NewChaCha8([32]byte{'s', 'h', 'a'}))
		buf := make([]byte, 300+16)
		for n := 0; n <= 300; n++ {
			for range 8 {
				off := rng.IntN(16) // unaligned starts, too
				p := buf[off : off+n]
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
				check(t, "random", p)
			}
			for _, fill := range []byte{0x00, 0x80, 0xff, 'k'} {
				check(t, "fill "+strconv.Itoa(int(fill)), bytes.Repeat([]byte{fill}, n))
			}
			counting := make([]byte, n)
			for i := range counting {
				counting[i] = byte(i)
			}
			check(t, "counting", counting)
			check(t, "nil-backed", counting[:n:n])
		}
		check(t, "nil", nil)
	})
}

// TestSum256KnownAnswers pins the output to FIPS 180-4 examples, so that
// the test does not only compare the package with crypto/sha256.
func TestSum256KnownAnswers(t *testing.T) {
	paths(t, func(t *testing.T) {
		for _, tt := range []struct{ in, want string }{
			{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
			{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
			{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
		} {
			got := Sum256([]byte(tt.in))
			if hex.EncodeToString(got[:]) != tt.want {
				t.Errorf("Sum256(%q) = %x, want %s", tt.in, got, tt.want)
			}
		}
	})
}

func TestSum256Allocs(t *testing.T) {
	paths(t, func(t *testing.T) {
		for _, n := range []int{0, 45, maxOneBlock, maxOneBlock + 1, 128} {
			p := bytes.Repeat([]byte{'x'}, n)
			var sink [Size]byte
			if a := testing.AllocsPerRun(100, func() { sink = Sum256(p) }); a != 0 {
				t.Errorf("Sum256(%d bytes) makes %v allocations, want 0", n, a)
			}
			_ = sink
		}
	})
}

func FuzzSum256(f *testing.F) {
	for _, n := range []int{0, 1, 45, maxOneBlock, maxOneBlock + 1, 64, 65, 200} {
		f.Add(bytes.Repeat([]byte{byte(n)}, n))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		want := sha256.Sum256(p)
		if got := Sum256(p); got != want {
			t.Fatalf("Sum256(%x) = %x, want %x", p, got, want)
		}
		// Call the fast path directly rather than flipping useSHANI, which
		// fuzz workers would race on.
		if detected && len(p) <= maxOneBlock {
			if got := sumOneBlock(p); got != want {
				t.Fatalf("sumOneBlock(%x) = %x, want %x", p, got, want)
			}
		}
	})
}

var sink [Size]byte

func BenchmarkSum256(b *testing.B) {
	for _, n := range []int{45, maxOneBlock, 128} {
		p := bytes.Repeat([]byte{'k'}, n)
		b.Run(strconv.Itoa(n)+"/sha256x", func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				sink = Sum256(p)
			}
		})
		b.Run(strconv.Itoa(n)+"/crypto_sha256", func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for b.Loop() {
				sink = sha256.Sum256(p)
			}
		})
	}
}
