//go:build !linux

package hugepages

import "unsafe"

// Advise is a no-op where huge pages are not asked for.
func Advise(unsafe.Pointer, uintptr) {}
