//go:build !purego

package sha256x

import (
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestHasSHANI checks the CPUID decoding against the kernel's view of the
// same bits, so that a wrong bit cannot silently disable (or, worse,
// enable) the fast path.
func TestHasSHANI(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc/cpuinfo")
	}
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip(err)
	}
	var flags []string
	for line := range strings.Lines(string(info)) {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "flags" {
			flags = strings.Fields(value)
			break
		}
	}
	if flags == nil {
		t.Skip("no flags line in /proc/cpuinfo")
	}
	want := slices.Contains(flags, "sha_ni") && slices.Contains(flags, "sse4_1") && slices.Contains(flags, "ssse3")
	if got := hasSHANI(); got != want {
		t.Fatalf("hasSHANI() = %v, /proc/cpuinfo says %v", got, want)
	}
	t.Logf("SHA-NI path: %v", want)
}
