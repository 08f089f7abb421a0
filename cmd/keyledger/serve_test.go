package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// A bad --trusted-proxies or --admin-http is a usage error (exit 2) that
// names the flag, before anything starts.
func TestServe_flagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"a prefix that is no prefix", []string{"--trusted-proxies", "10.0.0.0/33"}, []string{"--trusted-proxies", "CIDR"}},
		{"a name for an address", []string{"--trusted-proxies", "127.0.0.0/8,gateway.internal"}, []string{"--trusted-proxies", `"gateway.internal"`}},
		{"an admin listener on a verifier", []string{"--role", "verifier", "--nats", "nats://127.0.0.1:1", "--admin-http", "127.0.0.1:0"},
			[]string{"--admin-http", "verifier"}},
		{"the admin listener on the verifier's address", []string{"--http", "127.0.0.1:18080", "--admin-http", "127.0.0.1:18080"},
			[]string{"--admin-http", "--http"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out, errb bytes.Buffer
			args := append([]string{"serve", "--data", t.TempDir(), "--nats-listen", ""}, tc.args...)
			if code := run(ctx, args, &out, &errb); code != 2 {
				t.Fatalf("exit %d, want 2; stderr %s", code, errb.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(errb.String(), w) {
					t.Fatalf("stderr %q does not name %q", errb.String(), w)
				}
			}
		})
	}
}
