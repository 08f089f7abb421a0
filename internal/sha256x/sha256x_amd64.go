//go:build !purego

package sha256x

import "encoding/binary"

// useSHANI selects the single-block path. It is a variable, not a
// constant, so that tests can force the crypto/sha256 fallback.
var useSHANI = hasSHANI()

// hasSHANI reports whether the CPU has every instruction block uses. The
// standard library's own flag lives in an internal package, hence CPUID.
func hasSHANI() bool {
	const (
		ecx1SSSE3  = 1 << 9
		ecx1SSE41  = 1 << 19
		ebx7SHA    = 1 << 29
		firstLeaf7 = 7
	)
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < firstLeaf7 {
		return false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	_, ebx7, _, _ := cpuid(7, 0)
	return ecx1&ecx1SSSE3 != 0 && ecx1&ecx1SSE41 != 0 && ebx7&ebx7SHA != 0
}

// sumOneBlock hashes p, at most maxOneBlock bytes, with one compression.
func sumOneBlock(p []byte) (digest [Size]byte) {
	// FIPS 180-4 5.1.1 padding: p, 0x80, zeros, bit length big-endian.
	var b [64]byte
	n := copy(b[:maxOneBlock], p)
	b[n] = 0x80
	binary.BigEndian.PutUint64(b[56:], uint64(n)<<3)
	block(&digest, &b)
	return digest
}

// block compresses one padded block p from the SHA-256 initial state and
// writes the big-endian digest to dig. It needs SHA-NI, SSE4.1 and SSSE3.
//
//go:noescape
func block(dig *[Size]byte, p *[64]byte)

// cpuid executes CPUID with EAX=eaxArg and ECX=ecxArg.
func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)
