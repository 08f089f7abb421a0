package hugepages

import (
	"syscall"
	"unsafe"
)

// Advise asks the kernel to back the whole 2 MiB pages of a freshly
// allocated array with huge pages (MADV_HUGEPAGE). A table of millions
// of keys is read at random: with 4 KiB pages nearly every lookup also
// misses the TLB, and under a hypervisor a page walk costs about as much
// again as the memory access itself. It is advice only: memory the
// kernel cannot back so stays as it is, and the call's failure is of no
// consequence.
func Advise(p unsafe.Pointer, size uintptr) {
	const huge = 2 << 20
	start := (uintptr(p) + huge - 1) &^ (huge - 1)
	end := (uintptr(p) + size) &^ (huge - 1)
	if end <= start {
		return
	}
	_ = syscall.Madvise(unsafe.Slice((*byte)(unsafe.Add(p, start-uintptr(p))), end-start), 14 /* MADV_HUGEPAGE */)
}
