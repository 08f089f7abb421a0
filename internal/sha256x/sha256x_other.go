//go:build !amd64 || purego

package sha256x

import "crypto/sha256"

// useSHANI is never set without the amd64 assembly; it exists so that
// Sum256 and the tests read the same on every platform.
var useSHANI = false

// sumOneBlock is unreachable without the assembly and defers to
// crypto/sha256.
func sumOneBlock(p []byte) [Size]byte { return sha256.Sum256(p) }
