package keyledger_test

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

func TestParseAllowlist(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		canon   []string
		allow   []string
		deny    []string
		wantErr string
	}{
		{name: "none", in: nil, allow: []string{"203.0.113.1", "::1"}},
		{name: "v4 address", in: []string{"203.0.113.7"}, canon: []string{"203.0.113.7"},
			allow: []string{"203.0.113.7", "::ffff:203.0.113.7"}, deny: []string{"203.0.113.8", "::1"}},
		{name: "v4 cidr", in: []string{" 10.0.0.0/8 "}, canon: []string{"10.0.0.0/8"},
			allow: []string{"10.1.2.3"}, deny: []string{"11.0.0.1"}},
		{name: "v6 address and cidr", in: []string{"2001:db8::1", "2001:db8:1::/48"}, canon: []string{"2001:db8::1", "2001:db8:1::/48"},
			allow: []string{"2001:db8::1", "2001:db8:1:ffff::9"}, deny: []string{"2001:db8::2", "10.0.0.1"}},
		{name: "v4-mapped prefix is v4", in: []string{"::ffff:192.0.2.0/120"}, canon: []string{"192.0.2.0/24"}, allow: []string{"192.0.2.200"}},
		{name: "duplicates collapse", in: []string{"192.0.2.1", "192.0.2.1/32"}, canon: []string{"192.0.2.1"}},
		{name: "host bits", in: []string{"10.0.0.1/8"}, wantErr: "host bits"},
		{name: "garbage", in: []string{"example.com"}, wantErr: "not an IP"},
		{name: "zone", in: []string{"fe80::1%eth0"}, wantErr: "not an IP"},
		{name: "mixed mapped prefix", in: []string{"::ffff:0:0/64"}, wantErr: "mixes"},
		{name: "too many", in: strings.Split(strings.Repeat("10.0.0.1,", 101), ",")[:101], wantErr: "at most 100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, canon, err := keyledger.ParseAllowlist(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(canon, tt.canon) {
				t.Fatalf("canonical %v, want %v", canon, tt.canon)
			}
			for _, s := range tt.allow {
				if !a.Allows(netip.MustParseAddr(s)) {
					t.Errorf("%s refused", s)
				}
			}
			for _, s := range tt.deny {
				if a.Allows(netip.MustParseAddr(s)) {
					t.Errorf("%s allowed", s)
				}
			}
			if a != nil && a.Allows(netip.Addr{}) {
				t.Error("an unknown address is allowed by a list")
			}
		})
	}
}

func FuzzParseAllowlist(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "2001:db8::/32", "::ffff:1.2.3.4", "1.2.3.4/33", "", "a/b"} {
		f.Add(s, "203.0.113.9")
	}
	f.Fuzz(func(t *testing.T, entry, addr string) {
		a, canon, err := keyledger.ParseAllowlist([]string{entry})
		if err != nil {
			return
		}
		// The canonical form parses to the same list.
		b, canon2, err := keyledger.ParseAllowlist(canon)
		if err != nil || !reflect.DeepEqual(canon, canon2) {
			t.Fatalf("canonical %v does not round-trip: %v %v", canon, canon2, err)
		}
		if ip, err := netip.ParseAddr(addr); err == nil && a.Allows(ip) != b.Allows(ip) {
			t.Fatalf("%v and its canonical form %v disagree on %s", entry, canon, addr)
		}
	})
}

func TestValidateMetadata(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: ``, want: ``},
		{in: `null`, want: ``},
		{in: `{}`, want: ``},
		{in: ` {"plan": "pro", "n": 12345678901234567890} `, want: `{"plan":"pro","n":12345678901234567890}`},
		{in: `[1]`, wantErr: "JSON object"},
		{in: `"x"`, wantErr: "JSON object"},
		{in: `{"a":1} {"b":2}`, wantErr: "JSON object"},
		{in: `{"a":{"b":{"c":{"d":{}}}}}`, wantErr: "deeper"},
		{in: `{"` + strings.Repeat("k", 65) + `":1}`, wantErr: "keys must be"},
		{in: `{"a":"` + strings.Repeat("x", 4100) + `"}`, wantErr: "at most 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.in[:min(len(tt.in), 20)], func(t *testing.T) {
			got, err := keyledger.ValidateMetadata([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("= %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}

func TestMergePatch(t *testing.T) {
	tests := []struct{ doc, patch, want string }{
		{`{"a":1,"b":{"c":2,"d":3}}`, `{"b":{"c":null,"e":4},"f":"x"}`, `{"a":1,"b":{"d":3,"e":4},"f":"x"}`},
		{`{"a":1}`, `{"a":null}`, ``},
		{``, `{"a":[1,2]}`, `{"a":[1,2]}`},
		{`{"big":12345678901234567890}`, `{"x":1}`, `{"big":12345678901234567890,"x":1}`},
	}
	for _, tt := range tests {
		got, err := keyledger.MergePatch([]byte(tt.doc), []byte(tt.patch))
		if err != nil || string(got) != tt.want {
			t.Errorf("MergePatch(%s, %s) = %s, %v; want %s", tt.doc, tt.patch, got, err, tt.want)
		}
	}
}

func FuzzMergePatch(f *testing.F) {
	f.Add(`{"a":1}`, `{"a":null,"b":{"c":1}}`)
	f.Fuzz(func(t *testing.T, doc, patch string) {
		d, err := keyledger.ValidateMetadata([]byte(doc))
		if err != nil {
			return
		}
		got, err := keyledger.MergePatch(d, []byte(patch))
		if err != nil {
			return
		}
		// What a patch yields is valid metadata.
		if again, err := keyledger.ValidateMetadata(got); err != nil || string(again) != string(got) {
			t.Fatalf("patched metadata %s is not canonical valid metadata: %s %v", got, again, err)
		}
	})
}
