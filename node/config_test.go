package node

import (
	"errors"
	"strings"
	"testing"
)

func TestConfig_Validate(t *testing.T) {
	valid := func() Config { return Config{Role: RoleAdmin, Name: "n1"} }
	tests := []struct {
		name string
		mod  func(*Config)
		want string // "" = valid; else a word of the usage error
	}{
		{"defaults", func(*Config) {}, ""},
		{"cluster member", func(c *Config) {
			c.Cluster, c.Routes, c.NATSListen = "127.0.0.1:6222", []string{"nats-route://127.0.0.1:6223"}, "127.0.0.1:4222"
		}, ""},
		{"cluster member without a client listener", func(c *Config) { c.Cluster, c.Routes = "127.0.0.1:6222", []string{"nats-route://127.0.0.1:6223"} }, "--nats-listen"},
		{"verifier following NATS", func(c *Config) { c.Role, c.NATSURL = RoleVerifier, "nats://127.0.0.1:4222" }, ""},
		{"sync interval", func(c *Config) { c.Sync = "2m" }, ""},
		{"unknown role", func(c *Config) { c.Role = "boss" }, "--role"},
		{"verifier without NATS", func(c *Config) { c.Role = RoleVerifier }, "--nats"},
		{"analytics on a verifier", func(c *Config) { c.Role, c.NATSURL, c.ClickHouse = RoleVerifier, "nats://x", "127.0.0.1:9000" }, "--clickhouse"},
		{"cluster without routes", func(c *Config) { c.Cluster = "127.0.0.1:6222" }, "--routes"},
		{"cluster with external NATS", func(c *Config) {
			c.Cluster, c.Routes, c.NATSURL = "127.0.0.1:6222", []string{"nats-route://127.0.0.1:6223"}, "nats://x"
		}, "--nats"},
		{"replicas", func(c *Config) { c.Replicas = 7 }, "--replicas"},
		{"node name with a dot", func(c *Config) { c.Name = "a.b" }, "--node"},
		{"bad sync", func(c *Config) { c.Sync = "sometimes" }, "--sync"},
		{"short admin token", func(c *Config) { c.AdminToken = "short" }, "--admin-token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mod(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want valid", err)
			case tt.want != "" && (err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Validate() = %v, want a usage error about %s", err, tt.want)
			}
		})
	}
}
