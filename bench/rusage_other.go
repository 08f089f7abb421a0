//go:build !unix

package bench

import "time"

// systemTime is not measured on this system.
func systemTime() time.Duration { return 0 }
