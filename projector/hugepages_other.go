//go:build !linux

package projector

import "unsafe"

// adviseHuge is a no-op where huge pages are not asked for.
func adviseHuge(unsafe.Pointer, uintptr) {}
