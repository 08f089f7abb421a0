package hugepages_test

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"github.com/keyledger/keyledger/internal/hugepages"
)

// The advice lands on the array's whole 2 MiB pages: the kernel marks
// the mapping that holds them (VmFlags "hg" in /proc/self/smaps), and
// leaves a mapping it did not advise unmarked.
func TestAdvise(t *testing.T) {
	const huge = 2 << 20
	b := make([]byte, 4*huge)
	p := uintptr(unsafe.Pointer(&b[0]))
	inside := (p + huge - 1) &^ (huge - 1) // the first whole huge page
	if flagged(t, inside) {
		t.Fatalf("the array's mapping is advised before Advise")
	}
	hugepages.Slice(b)
	if !flagged(t, inside) {
		t.Fatalf("the array's whole huge pages are not advised after Advise")
	}
	// Too small to hold a whole huge page: nothing to advise, no call.
	small := make([]byte, 4096)
	hugepages.Slice(small)
}

// flagged reports whether the mapping holding addr has MADV_HUGEPAGE.
func flagged(t *testing.T, addr uintptr) bool {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x", &lo, &hi); n == 2 {
			in = lo <= addr && addr < hi
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.Contains(line, " hg")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("no mapping holds %#x", addr)
	return false
}
