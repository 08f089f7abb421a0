//go:build unix

package bench

import (
	"syscall"
	"time"
)

// systemTime is the CPU time the process has spent in the kernel. Over a
// cold start it is mostly page faults: the first touch of the table's
// fresh memory, which on a VM can cost more than the load's own work.
func systemTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Stime.Nano())
}
