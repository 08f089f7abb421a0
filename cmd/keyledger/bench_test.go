package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

// The bench commands run end to end at a small size and print one JSON
// object with a name, a positive value and a unit. (bench authz needs wrk
// and is exercised by make bench-all.)
func TestBench_smoke(t *testing.T) {
	ch := os.Getenv("KEYLEDGER_CLICKHOUSE")
	if ch == "" {
		ch = "127.0.0.1:19000"
	}
	for _, tc := range []struct {
		args []string
		name string
		unit string
	}{
		{[]string{"verify", "--keys", "1000", "--duration", "20ms"}, "verify_valid_ns", "ns/op"},
		{[]string{"revoke", "--nodes", "1", "--revocations", "5"}, "revoke_propagation_p99", "ms"},
		{[]string{"coldstart", "--keys", "2000", "--tail", "10"}, "coldstart_seconds", "s"},
		{[]string{"ingest", "--events", "3000", "--clickhouse", ch}, "ingest_events_per_second", "events/s"},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var stdout, stderr bytes.Buffer
			args := append([]string{"bench"}, append(tc.args, "--json")...)
			if code := run(ctx, args, &stdout, &stderr); code != 0 {
				t.Fatalf("keyledger %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
			}
			var res struct {
				Name  string  `json:"name"`
				Value float64 `json:"value"`
				Unit  string  `json:"unit"`
			}
			if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
				t.Fatalf("output is not one JSON object: %v\n%s", err, stdout.String())
			}
			if res.Name != tc.name || res.Unit != tc.unit || !(res.Value > 0) {
				t.Fatalf("result %+v, want name %s unit %s and a positive value", res, tc.name, tc.unit)
			}
		})
	}
}
