package keyledger

import (
	"net/netip"
	"slices"
	"strings"
)

// MaxAllowedIPs bounds a key's allowlist.
const MaxAllowedIPs = 100

// Allowlist is a key's allowed source addresses: IPv4 and IPv6 addresses
// and CIDR prefixes. A nil Allowlist allows every address.
type Allowlist struct {
	prefixes []netip.Prefix
}

// ParseAllowlist parses allowed_ips: each entry an address ("203.0.113.7",
// "2001:db8::1") or a prefix ("10.0.0.0/8", "2001:db8::/32"), at most
// MaxAllowedIPs of them. IPv4-mapped IPv6 forms are read as IPv4, and a
// prefix with host bits set is refused (it is almost always a typo).
// It returns the entries in canonical form. An empty list is nil: no
// restriction.
func ParseAllowlist(entries []string) (*Allowlist, []string, error) {
	if len(entries) == 0 {
		return nil, nil, nil
	}
	if len(entries) > MaxAllowedIPs {
		return nil, nil, Errorf(Invalid, "allowed_ips holds %d entries; at most %d", len(entries), MaxAllowedIPs)
	}
	a := &Allowlist{}
	canon := make([]string, 0, len(entries))
	for _, e := range entries {
		s := strings.TrimSpace(e)
		var p netip.Prefix
		if strings.Contains(s, "/") {
			var err error
			if p, err = netip.ParsePrefix(s); err != nil {
				return nil, nil, Errorf(Invalid, "allowed_ips: %s is not an IP address or CIDR prefix", Quote(clip(s, 64)))
			}
			if p.Addr().Is4In6() {
				if p.Bits() < 96 {
					return nil, nil, Errorf(Invalid, "allowed_ips: %s mixes IPv4 and IPv6", Quote(clip(s, 64)))
				}
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			if p.Masked() != p {
				return nil, nil, Errorf(Invalid, "allowed_ips: %s has host bits set (did you mean %s?)", Quote(clip(s, 64)), p.Masked())
			}
		} else {
			addr, err := netip.ParseAddr(s)
			if err != nil || addr.Zone() != "" {
				return nil, nil, Errorf(Invalid, "allowed_ips: %s is not an IP address or CIDR prefix", Quote(clip(s, 64)))
			}
			addr = addr.Unmap()
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		if slices.Contains(a.prefixes, p) {
			continue
		}
		a.prefixes = append(a.prefixes, p)
		if p.IsSingleIP() {
			canon = append(canon, p.Addr().String())
		} else {
			canon = append(canon, p.String())
		}
	}
	return a, canon, nil
}

// Allows reports whether addr may use the key. A nil list allows every
// address; a list allows no invalid (unknown) address.
func (a *Allowlist) Allows(addr netip.Addr) bool {
	if a == nil {
		return true
	}
	addr = addr.Unmap()
	for _, p := range a.prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
