// Package hugepages asks the kernel to back large arrays that are read at
// random with huge pages: the verification table's, and the benchmark
// that measures what one access to such an array costs.
package hugepages

import "unsafe"

// Slice is Advise for the array behind s (nothing for an empty one).
func Slice[T any](s []T) {
	if len(s) > 0 {
		Advise(unsafe.Pointer(&s[0]), uintptr(len(s))*unsafe.Sizeof(s[0]))
	}
}
