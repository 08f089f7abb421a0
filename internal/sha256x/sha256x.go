// Package sha256x computes SHA-256 of short inputs faster than
// crypto/sha256.
//
// keyledger hashes every presented key (about 45 bytes) once per request.
// For such an input crypto/sha256.Sum256 spends about as long in its
// generic digest bookkeeping (Write, padding, checkSum) as in the one
// compression it needs. On amd64 with SHA-NI, Sum256 builds the single
// padded block on the stack and compresses it directly; everything else
// goes to crypto/sha256, so the output is always the same.
package sha256x

import "crypto/sha256"

// Size is the length of a SHA-256 digest in bytes.
const Size = sha256.Size

// maxOneBlock is the longest input that, with the 0x80 marker and the
// 64-bit length, still fits one 64-byte block.
const maxOneBlock = 64 - 1 - 8

// Sum256 returns the SHA-256 digest of p, exactly as crypto/sha256.Sum256
// does. It does not retain or modify p and does not allocate.
func Sum256(p []byte) [Size]byte {
	if useSHANI && len(p) <= maxOneBlock {
		return sumOneBlock(p)
	}
	return sha256.Sum256(p)
}
