package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/bench"
)

// TestMain runs a measured node when a benchmark under test starts this
// binary as one (bench.NodeEnv), and the tests otherwise.
func TestMain(m *testing.M) {
	if os.Getenv(bench.NodeEnv) == "1" {
		// os.Args: this binary, "bench", then Main's arguments.
		if err := bench.Main(context.Background(), os.Args[2:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The bench commands run end to end at a small size and print one JSON
// object with a name, a positive value and a unit. (bench authz needs wrk
// and nginx and is exercised by make bench-all.) The ingest case needs the
// ClickHouse that `make test` starts, and fails without it.
func TestBench_smoke(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		name  string
		unit  string
		extra []string // figures the result must carry, each positive
	}{
		{[]string{"verify", "--keys", "1000", "--duration", "20ms"}, "verify_valid_ns", "ns/op", nil},
		{[]string{"verify", "--keys", "3000", "--duration", "20ms", "--random"}, "verify_valid_ns", "ns/op",
			[]string{"random_valid_ns", "memory_latency_ns"}},
		{[]string{"revoke", "--nodes", "1", "--revocations", "5"}, "revoke_propagation_p99", "ms", nil},
		{[]string{"coldstart", "--keys", "2000", "--tail", "10", "--replay", "--bootstrap"}, "coldstart_seconds", "s",
			[]string{"replay_on_checkpoint_events_per_s", "full_replay_events_per_s", "bootstrap_download_s", "bootstrap_ready_s", "start_s", "first_start_s", "first_start_load_s"}},
		{[]string{"ingest", "--events", "3000"}, "ingest_events_per_second", "events/s", nil},
		{[]string{"audit", "--events", "300"}, "audit_verify_events_per_second", "events/s", nil},
		{[]string{"quota", "--nodes", "1", "--quota", "500", "--workers", "2", "--lease-max", "50"}, "quota_overshoot", "verifications", nil},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			args := append(slices.Clone(tc.args), "--json")
			if tc.args[0] == "ingest" {
				args = append(args, "--clickhouse", analyticstest.Addr(t))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var stdout, stderr bytes.Buffer
			if err := bench.Main(ctx, args, &stdout, &stderr); err != nil {
				t.Fatalf("keyledger bench %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
			}
			var res bench.Result
			if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
				t.Fatalf("output is not one JSON object: %v\n%s", err, stdout.String())
			}
			if tc.args[0] == "quota" {
				// The figure is the overshoot: never above 0.
				if res.Name != tc.name || res.Unit != tc.unit || res.Value > 0 || !(res.Extra["accepted"] > 0) {
					t.Fatalf("result %+v, want name %s, no overshoot, and verifications accepted", res, tc.name)
				}
				return
			}
			if res.Name != tc.name || res.Unit != tc.unit || !(res.Value > 0) {
				t.Fatalf("result %+v, want name %s unit %s and a positive value", res, tc.name, tc.unit)
			}
			for _, x := range tc.extra {
				if !(res.Extra[x] > 0) {
					t.Errorf("result %+v: %s is not positive", res, x)
				}
			}
		})
	}
}

// Main's errors tell the CLI which exit code to use: help is not a
// failure, a bad command line is a usage error (exit 2), and neither runs
// a benchmark.
func TestMain_errors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want error
	}{
		{[]string{"-h"}, flag.ErrHelp},
		{[]string{"--help"}, flag.ErrHelp},
		{[]string{"revoke", "-h"}, flag.ErrHelp},
		{nil, bench.ErrUsage},
		{[]string{"nosuch"}, bench.ErrUsage},
		{[]string{"revoke", "--nodes", "0"}, bench.ErrUsage},
		{[]string{"verify", "--no-such-flag"}, bench.ErrUsage},
		{[]string{"coldstart", "extra"}, bench.ErrUsage},
		{[]string{"all", "--json", "extra"}, bench.ErrUsage},
	} {
		var stdout, stderr bytes.Buffer
		err := bench.Main(context.Background(), tc.args, &stdout, &stderr)
		if !errors.Is(err, tc.want) {
			t.Errorf("Main(%q) = %v, want an error wrapping %v", tc.args, err, tc.want)
		}
		if errors.Is(tc.want, flag.ErrHelp) && stdout.Len()+stderr.Len() == 0 {
			t.Errorf("Main(%q) printed no help", tc.args)
		}
	}
}
