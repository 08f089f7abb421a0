package keyledger_test

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

// MustCatalog returns the catalog of names.
func MustCatalog(tb testing.TB, names ...string) *keyledger.Catalog {
	tb.Helper()
	c, err := keyledger.NewCatalog(names)
	if err != nil {
		tb.Fatalf("NewCatalog(%q): %v", names, err)
	}
	return c
}

// MustMask returns the mask of names in c.
func MustMask(tb testing.TB, c *keyledger.Catalog, names ...string) keyledger.Permissions {
	tb.Helper()
	p, err := c.Mask(names)
	if err != nil {
		tb.Fatalf("Mask(%q): %v", names, err)
	}
	return p
}

func TestNewCatalog(t *testing.T) {
	many := func(n int) []string {
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("p%d", i)
		}
		return s
	}
	t.Run("valid", func(t *testing.T) {
		for _, names := range [][]string{nil, {"a"}, keyledger.DefaultPermissions, many(keyledger.MaxPermissions), {strings.Repeat("x", 64)}} {
			c := MustCatalog(t, names...)
			if got := c.Names(); len(got) != len(names) || (len(names) > 0 && !reflect.DeepEqual(got, names)) {
				t.Fatalf("Names() = %q, want %q", got, names)
			}
		}
	})
	rejected := []struct {
		name  string
		names []string
	}{
		{"duplicate", []string{"storage:read", "storage:write", "storage:read"}},
		{"all is reserved", []string{"storage:read", "all"}},
		{"empty name", []string{""}},
		{"space", []string{"storage read"}},
		{"leading space", []string{" storage:read"}},
		{"comma", []string{"storage:read,storage:write"}},
		{"tab", []string{"storage\tread"}},
		{"newline", []string{"storage:read\n"}},
		{"carriage return", []string{"storage\rread"}},
		{"name over 64 bytes", []string{strings.Repeat("x", 65)}},
		{"64 permissions", many(keyledger.MaxPermissions + 1)},
		{"1000 permissions", many(1000)},
	}
	for _, tt := range rejected {
		t.Run(tt.name, func(t *testing.T) {
			c, err := keyledger.NewCatalog(tt.names)
			if c != nil || !errors.Is(err, keyledger.ErrInvalid) {
				t.Fatalf("NewCatalog = %v, %v; want nil, ErrInvalid", c, err)
			}
		})
	}
}

func TestCatalog_Names(t *testing.T) {
	c := MustCatalog(t, "a", "b")
	n := c.Names()
	n[0] = "mutated"
	if got := c.Names(); got[0] != "a" {
		t.Fatalf("Names() shares its backing array with the catalog: %q", got)
	}
	if got := keyledger.DefaultCatalog.Names(); !reflect.DeepEqual(got, keyledger.DefaultPermissions) {
		t.Fatalf("DefaultCatalog.Names() = %q, want %q", got, keyledger.DefaultPermissions)
	}
}

func TestCatalog_Bit(t *testing.T) {
	c := MustCatalog(t, "a", "b", "c")
	seen := keyledger.Permissions(0)
	for _, n := range []string{"a", "b", "c"} {
		b, ok := c.Bit(n)
		if !ok || b == 0 || b&(b-1) != 0 {
			t.Fatalf("Bit(%q) = %b, %v; want one bit", n, b, ok)
		}
		if seen&b != 0 {
			t.Fatalf("Bit(%q) = %b reuses a bit", n, b)
		}
		seen |= b
	}
	for _, n := range []string{"all", "d", "", "A"} {
		if b, ok := c.Bit(n); ok || b != 0 {
			t.Fatalf("Bit(%q) = %b, %v; want 0, false", n, b, ok)
		}
	}
}

func TestCatalog_Mask(t *testing.T) {
	c := keyledger.DefaultCatalog
	read, _ := c.Bit("storage:read")
	write, _ := c.Bit("storage:write")
	exec, _ := c.Bit("workflows:execute")

	tests := []struct {
		name  string
		names []string
		all   bool
		count int
		has   []keyledger.Permissions
		lacks []keyledger.Permissions
	}{
		{"nil means all", nil, true, 0, []keyledger.Permissions{read, write, exec, read | write}, nil},
		{"empty means all", []string{}, true, 0, []keyledger.Permissions{read | write | exec}, nil},
		{"all", []string{"all"}, true, 0, []keyledger.Permissions{read, write}, nil},
		{"one", []string{"storage:read"}, false, 1, []keyledger.Permissions{read}, []keyledger.Permissions{write, exec, read | write}},
		{"two", []string{"storage:read", "storage:write"}, false, 2, []keyledger.Permissions{read, write, read | write}, []keyledger.Permissions{exec, read | exec}},
		{"duplicates", []string{"storage:read", "storage:read"}, false, 1, []keyledger.Permissions{read}, []keyledger.Permissions{write}},
		{"all and one", []string{"storage:read", "all"}, true, 1, []keyledger.Permissions{write, exec}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := MustMask(t, c, tt.names...)
			if p.All() != tt.all {
				t.Errorf("All() = %v, want %v", p.All(), tt.all)
			}
			if p.Count() != tt.count {
				t.Errorf("Count() = %d, want %d", p.Count(), tt.count)
			}
			for _, b := range tt.has {
				if !p.Has(b) {
					t.Errorf("%b.Has(%b) = false, want true", p, b)
				}
			}
			for _, b := range tt.lacks {
				if p.Has(b) {
					t.Errorf("%b.Has(%b) = true, want false", p, b)
				}
			}
			if !p.Has(0) {
				t.Errorf("Has(0) = false; no required permission must always pass")
			}
		})
	}

	t.Run("unknown permission", func(t *testing.T) {
		for _, bad := range []string{"storage:delete", "", "ALL", "Storage:read"} {
			p, err := c.Mask([]string{"storage:read", bad})
			if p != 0 || !errors.Is(err, keyledger.ErrInvalid) {
				t.Fatalf("Mask(%q) = %b, %v; want 0, ErrInvalid", bad, p, err)
			}
			msg := keyledger.ErrorMessage(err)
			if !strings.Contains(msg, fmt.Sprintf("%q", bad)) {
				t.Errorf("message %q does not name %q", msg, bad)
			}
			for _, n := range c.Names() {
				if !strings.Contains(msg, n) {
					t.Errorf("message %q does not list the catalog's %q", msg, n)
				}
			}
		}
	})

	t.Run("63rd permission is not all", func(t *testing.T) {
		names := make([]string, keyledger.MaxPermissions)
		for i := range names {
			names[i] = fmt.Sprintf("p%d", i)
		}
		big := MustCatalog(t, names...)
		last := MustMask(t, big, names[len(names)-1])
		if last.All() || last.Count() != 1 {
			t.Fatalf("mask of the last permission = %b: All %v, Count %d", last, last.All(), last.Count())
		}
		first, _ := big.Bit(names[0])
		if last.Has(first) {
			t.Fatalf("last permission grants the first")
		}
		every := MustMask(t, big, names...)
		if every.All() || every.Count() != keyledger.MaxPermissions {
			t.Fatalf("mask of every permission = %b: All %v, Count %d", every, every.All(), every.Count())
		}
	})
}

func TestPermissions_Has(t *testing.T) {
	const a, b, c keyledger.Permissions = 1, 2, 4
	all := MustMask(t, keyledger.DefaultCatalog, "all")
	tests := []struct {
		p, req keyledger.Permissions
		want   bool
	}{
		{0, 0, true},
		{0, a, false},
		{a, 0, true},
		{a, a, true},
		{a, b, false},
		{a | b, b, true},
		{a | b, a | b, true},
		{a, a | b, false},
		{a | c, a | b, false},
		{all, a | b | c, true},
		{all, 1 << 60, true},
		// Nor the reserved leaks:report.
		{all, MustMask(t, keyledger.DefaultCatalog, "leaks:report"), false},
		{MustMask(t, keyledger.DefaultCatalog, "leaks:report"), MustMask(t, keyledger.DefaultCatalog, "leaks:report"), true},
		{MustMask(t, keyledger.DefaultCatalog, "admin"), MustMask(t, keyledger.DefaultCatalog, "leaks:report"), false},
		{MustMask(t, keyledger.DefaultCatalog, "leaks:report"), a, false},
		// "all" never grants the reserved admin permission.
		{all, MustMask(t, keyledger.DefaultCatalog, "admin"), false},
		{MustMask(t, keyledger.DefaultCatalog, "admin"), MustMask(t, keyledger.DefaultCatalog, "admin"), true},
		{MustMask(t, keyledger.DefaultCatalog, "admin"), a, false},
	}
	for _, tt := range tests {
		if got := tt.p.Has(tt.req); got != tt.want {
			t.Errorf("%b.Has(%b) = %v, want %v", tt.p, tt.req, got, tt.want)
		}
	}
}

func TestCatalog_Normalize(t *testing.T) {
	c := keyledger.DefaultCatalog
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"nil", nil, []string{"all"}},
		{"empty", []string{}, []string{"all"}},
		{"all", []string{"all"}, []string{"all"}},
		{"kept in order", []string{"storage:write", "storage:read"}, []string{"storage:write", "storage:read"}},
		{"duplicates removed", []string{"storage:read", "storage:write", "storage:read", "storage:write"}, []string{"storage:read", "storage:write"}},
		{"all twice", []string{"all", "all"}, []string{"all"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]string(nil), tt.in...)
			got, err := c.Normalize(in)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Normalize(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			if !slices.Equal(in, tt.in) {
				t.Fatalf("Normalize modified its input: %q", in)
			}
			if len(got) > 0 && len(in) > 0 {
				got[0] = "mutated"
				if in[0] == "mutated" {
					t.Fatalf("Normalize returned its input's backing array")
				}
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		got, err := c.Normalize([]string{"storage:read", "billing:admin"})
		if got != nil || !errors.Is(err, keyledger.ErrInvalid) {
			t.Fatalf("Normalize = %q, %v; want nil, ErrInvalid", got, err)
		}
		if !strings.Contains(keyledger.ErrorMessage(err), "billing:admin") {
			t.Fatalf("message %q does not name the unknown permission", keyledger.ErrorMessage(err))
		}
	})
}
