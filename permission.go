package keyledger

import (
	"math/bits"
	"strings"
)

// PermissionAll grants every permission of the product catalog.
const PermissionAll = "all"

// PermissionAdmin lets a ledger key use the admin API. It is reserved: no
// catalog may define it, and "all" does not grant it, so full product
// access never implies the power to issue and revoke keys.
const PermissionAdmin = "admin"

// PermissionLeaksReport lets a ledger key report leaked keys to POST
// /v1/leaks (an in-house scanner's key) and nothing else. It is reserved
// like admin: no catalog defines it and "all" does not grant it.
const PermissionLeaksReport = "leaks:report"

// DefaultPermissions is the product's default permission catalog.
var DefaultPermissions = []string{"workflows:read", "workflows:execute", "storage:read", "storage:write"}

// Permissions is a set of permissions as a bit mask over a Catalog, so the
// verify path checks a permission with one AND.
type Permissions uint64

// allBit marks a key holding "all"; it passes every check but admin.
const allBit Permissions = 1 << 63

// adminBit marks a key holding the reserved "admin" permission.
const adminBit Permissions = 1 << 62

// leaksBit marks a key holding the reserved "leaks:report" permission.
const leaksBit Permissions = 1 << 61

// reservedBits pass only when held: "all" grants neither.
const reservedBits = adminBit | leaksBit

// MaxPermissions is how many named permissions a catalog may hold.
const MaxPermissions = 61

// Has reports whether p holds the permission bit b. A zero b (no permission
// required) always passes; "all" passes everything but "admin".
func (p Permissions) Has(b Permissions) bool {
	if b&reservedBits != 0 {
		return p&b == b
	}
	return b == 0 || p&allBit != 0 || p&b == b
}

// Admin reports whether p holds the reserved admin permission.
func (p Permissions) Admin() bool { return p&adminBit != 0 }

// LeaksReport reports whether p holds the reserved leaks:report permission.
func (p Permissions) LeaksReport() bool { return p&leaksBit != 0 }

// All reports whether p is full access.
func (p Permissions) All() bool { return p&allBit != 0 }

// Count returns the number of named permissions in p.
func (p Permissions) Count() int { return bits.OnesCount64(uint64(p &^ (allBit | reservedBits))) }

// Catalog is the set of permissions keys may be granted.
type Catalog struct {
	names []string
	bit   map[string]Permissions
}

// NewCatalog builds a catalog. Names are non-empty, free of spaces and
// commas, unique, and "all" is reserved.
func NewCatalog(names []string) (*Catalog, error) {
	if len(names) > MaxPermissions {
		return nil, Errorf(Invalid, "a catalog holds at most %d permissions", MaxPermissions)
	}
	c := &Catalog{bit: make(map[string]Permissions, len(names))}
	for i, n := range names {
		if n == "" || n == PermissionAll || n == PermissionAdmin || n == PermissionLeaksReport || strings.ContainsAny(n, " ,\t\r\n") || len(n) > 64 {
			return nil, Errorf(Invalid, "invalid permission name %q", n)
		}
		if _, dup := c.bit[n]; dup {
			return nil, Errorf(Invalid, "permission %q listed twice", n)
		}
		c.names = append(c.names, n)
		c.bit[n] = 1 << uint(i)
	}
	return c, nil
}

// DefaultCatalog is the catalog of DefaultPermissions.
var DefaultCatalog, _ = NewCatalog(DefaultPermissions)

// Names returns the catalog's permissions in order.
func (c *Catalog) Names() []string { return append([]string(nil), c.names...) }

// Bit returns the bit of a permission name. Unknown names return 0, false;
// "all" is not a requirable permission and also returns false; "admin"
// returns its reserved bit.
func (c *Catalog) Bit(name string) (Permissions, bool) {
	if name == PermissionAdmin {
		return adminBit, true
	}
	if name == PermissionLeaksReport {
		return leaksBit, true
	}
	if len(c.names) <= maxScanNames {
		for i, n := range c.names {
			if n == name {
				return 1 << uint(i), true
			}
		}
		return 0, false
	}
	b, ok := c.bit[name]
	return b, ok
}

// maxScanNames is the largest catalog whose Bit compares names in order
// instead of hashing: Bit runs on every verification that requires a
// permission. Up to four names the scan is about twice as fast as the map
// for names of different lengths (one memequal at most) and no slower when
// all lengths are equal; from about eight names the map wins.
const maxScanNames = 4

// Mask turns a list of permission names into a set, refusing unknown names.
// An empty list means full access, the documented default.
func (c *Catalog) Mask(names []string) (Permissions, error) {
	if len(names) == 0 {
		return allBit, nil
	}
	var p Permissions
	for _, n := range names {
		if n == PermissionAll {
			p |= allBit
			continue
		}
		if n == PermissionAdmin {
			p |= adminBit
			continue
		}
		if n == PermissionLeaksReport {
			p |= leaksBit
			continue
		}
		b, ok := c.bit[n]
		if !ok {
			return 0, Errorf(Invalid, "unknown permission %s (the catalog has: all, admin, leaks:report, %s)", Quote(n), strings.Join(c.names, ", "))
		}
		p |= b
	}
	return p, nil
}

// Normalize returns names as stored in events: ["all"] for an empty list,
// duplicates removed, order kept.
func (c *Catalog) Normalize(names []string) ([]string, error) {
	if _, err := c.Mask(names); err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return []string{PermissionAll}, nil
	}
	out := make([]string, 0, len(names))
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out, nil
}
