package keyledger_test

import (
	"fmt"
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

// TestCatalog_BitEverySize checks Bit against Mask for catalogs of every
// size, so that small catalogs (searched by scanning) and large ones
// (searched in the map) agree.
func TestCatalog_BitEverySize(t *testing.T) {
	for size := 0; size <= keyledger.MaxPermissions; size++ {
		names := make([]string, size)
		for i := range names {
			// Equal lengths, so that a scan cannot decide on length alone.
			names[i] = fmt.Sprintf("perm%02d:x", i)
		}
		c := MustCatalog(t, names...)
		for _, n := range names {
			b, ok := c.Bit(n)
			if !ok || b != MustMask(t, c, n) {
				t.Fatalf("size %d: Bit(%q) = %b, %v; want %b, true", size, n, b, ok, MustMask(t, c, n))
			}
		}
		for _, n := range []string{"", keyledger.PermissionAll, "perm99:x", "perm00:y", "perm00:", "perm00:xx"} {
			if b, ok := c.Bit(n); ok || b != 0 {
				t.Fatalf("size %d: Bit(%q) = %b, %v; want 0, false", size, n, b, ok)
			}
		}
		if b, ok := c.Bit(keyledger.PermissionAdmin); !ok || !b.Admin() {
			t.Fatalf("size %d: Bit(admin) = %b, %v", size, b, ok)
		}
	}
}

func BenchmarkCatalog_Bit(b *testing.B) {
	large := make([]string, 16)
	for i := range large {
		large[i] = fmt.Sprintf("resource%02d:read", i)
	}
	for _, bc := range []struct {
		name string
		c    *keyledger.Catalog
		perm string
	}{
		{"default/first", keyledger.DefaultCatalog, "workflows:read"},
		{"default/last", keyledger.DefaultCatalog, "storage:write"},
		{"default/unknown", keyledger.DefaultCatalog, "storage:delete"},
		{"16/last", MustCatalog(b, large...), large[15]},
		{"16/unknown", MustCatalog(b, large...), "resource99:read"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			perm := string([]byte(bc.perm)) // not the catalog's own string
			b.ReportAllocs()
			for b.Loop() {
				bc.c.Bit(perm)
			}
		})
	}
}
