package main

import (
	"errors"
	"strings"
	"testing"
)

func TestNodeConfig_check(t *testing.T) {
	valid := func() nodeConfig { return nodeConfig{Role: roleAdmin, Name: "n1"} }
	tests := []struct {
		name string
		mod  func(*nodeConfig)
		want string // "" = valid; else a word of the usage error
	}{
		{"defaults", func(*nodeConfig) {}, ""},
		{"cluster member", func(c *nodeConfig) { c.Cluster, c.Routes = "127.0.0.1:6222", []string{"nats-route://127.0.0.1:6223"} }, ""},
		{"verifier following NATS", func(c *nodeConfig) { c.Role, c.NATSURL = roleVerifier, "nats://127.0.0.1:4222" }, ""},
		{"sync interval", func(c *nodeConfig) { c.Sync = "2m" }, ""},
		{"unknown role", func(c *nodeConfig) { c.Role = "boss" }, "--role"},
		{"verifier without NATS", func(c *nodeConfig) { c.Role = roleVerifier }, "--nats"},
		{"analytics on a verifier", func(c *nodeConfig) { c.Role, c.NATSURL, c.ClickHouse = roleVerifier, "nats://x", "127.0.0.1:9000" }, "--clickhouse"},
		{"cluster without routes", func(c *nodeConfig) { c.Cluster = "127.0.0.1:6222" }, "--routes"},
		{"cluster with external NATS", func(c *nodeConfig) {
			c.Cluster, c.Routes, c.NATSURL = "127.0.0.1:6222", []string{"nats-route://127.0.0.1:6223"}, "nats://x"
		}, "--nats"},
		{"replicas", func(c *nodeConfig) { c.Replicas = 7 }, "--replicas"},
		{"node name with a dot", func(c *nodeConfig) { c.Name = "a.b" }, "--node"},
		{"bad sync", func(c *nodeConfig) { c.Sync = "sometimes" }, "--sync"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mod(&c)
			err := c.check()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("check() = %v, want valid", err)
			case tt.want != "" && (err == nil || !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("check() = %v, want a usage error about %s", err, tt.want)
			}
		})
	}
}
