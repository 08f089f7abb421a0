package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

const benchUsage = `keyledger bench — reproducible benchmarks on this machine (loopback only)

Usage:
  keyledger bench revoke [--nodes 3] [--revocations 200] [--json]
      start a local cluster (or use --urls) and measure how long after the start
      of a revoke call every node refuses the key over HTTP
  keyledger bench verify [--keys 100000] [--json]
      in-process verification, ns/op for a valid key and a bad checksum
  keyledger bench authz [--duration 10s] [--connections 32] [--threads 1] [--json]
      GET /v1/authz with a valid key against nginx "return 200", same wrk settings
      (scripts/bench-deps.sh installs wrk and nginx)
  keyledger bench ingest [--events 500000] [--clickhouse HOST:PORT] [--json]
      events/s from USAGE into ClickHouse (scripts/clickhouse.sh start runs one)
  keyledger bench all [--json]
      every benchmark above with its defaults, one after the other
  keyledger bench coldstart [--keys 1000000] [--tail 1000] [--records] [--replay] [--json]
      seconds from start to ready (snapshot + tail, caught up, verifying) with N keys
`

// benchResult is what --json prints: one object per benchmark.
type benchResult struct {
	Name  string             `json:"name"`
	Value float64            `json:"value"`
	Unit  string             `json:"unit"`
	Extra map[string]float64 `json:"extra,omitempty"`
	Notes string             `json:"notes,omitempty"`
}

func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, benchUsage)
		return usageErr("bench needs a benchmark name")
	}
	switch args[0] {
	case "revoke":
		return benchRevoke(ctx, args[1:], stdout, stderr)
	case "coldstart":
		return benchColdstart(ctx, args[1:], stdout, stderr)
	case "verify":
		return benchVerify(ctx, args[1:], stdout)
	case "authz":
		return benchAuthz(ctx, args[1:], stdout, stderr)
	case "ingest":
		return benchIngest(ctx, args[1:], stdout, stderr)
	case "all":
		return benchAll(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, benchUsage)
	return usageErr("unknown benchmark %q", args[0])
}

// benchAll runs every benchmark with its defaults. With --json it prints
// one object per line; a benchmark that cannot run here (no wrk, no
// ClickHouse) is reported and the rest go on.
func benchAll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench all", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object per benchmark")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	var extra []string
	if *asJSON {
		extra = []string{"--json"}
	}
	var failed []string
	for _, b := range []struct {
		name string
		run  func([]string) error
	}{
		{"verify", func(a []string) error { return benchVerify(ctx, a, stdout) }},
		{"authz", func(a []string) error { return benchAuthz(ctx, a, stdout, stderr) }},
		{"revoke", func(a []string) error { return benchRevoke(ctx, a, stdout, stderr) }},
		{"coldstart", func(a []string) error { return benchColdstart(ctx, a, stdout, stderr) }},
		{"ingest", func(a []string) error { return benchIngest(ctx, a, stdout, stderr) }},
	} {
		if !*asJSON {
			fmt.Fprintf(stdout, "\n== bench %s\n", b.name)
		}
		if err := b.run(extra); err != nil {
			fmt.Fprintf(stderr, "bench %s: %s\n", b.name, describe(err))
			failed = append(failed, b.name)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("benchmarks that did not run: %s", strings.Join(failed, ", "))
	}
	return nil
}

func printBench(w io.Writer, asJSON bool, r benchResult, rows [][]string) error {
	if asJSON {
		b, _ := json.Marshal(r)
		_, err := fmt.Fprintln(w, string(b))
		return err
	}
	return printTable(w, []string{"METRIC", "VALUE"}, rows)
}

func benchRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench revoke", flag.ContinueOnError)
	nodes := fs.Int("nodes", 3, "cluster size to start")
	revocations := fs.Int("revocations", 200, "how many keys to revoke")
	urls := fs.String("urls", "", "use running nodes instead (comma-separated base URLs; the first serves the admin API)")
	token := fs.String("token", os.Getenv("KEYLEDGER_ADMIN_TOKEN"), "admin token with --urls")
	asJSON := fs.Bool("json", false, "print one JSON object")
	pollEvery := 0 * time.Millisecond
	fs.DurationVar(&pollEvery, "poll", 250*time.Microsecond, "pause between a node's polls (each poll is a verification, and a KeyUsed event)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *nodes < 1 || *revocations < 1 {
		return usageErr("--nodes and --revocations must be positive")
	}
	var bases []string
	tok := *token
	if *urls != "" {
		bases = splitList(*urls)
	} else {
		dir, err := os.MkdirTemp("", "keyledger-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		tok = "bench-token-0123456789abcdef"
		cfgs, err := clusterConfigs(*nodes, dir, tok, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "starting a %d-node cluster (R%d, sync always) on loopback…\n", *nodes, min(*nodes, 3))
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		c, err := startCluster(sctx, cfgs)
		cancel()
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		for _, n := range c.nodes {
			bases = append(bases, n.URL())
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(c.nodes[0].registry.Live()) < *nodes && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	call := func(method, url, auth, body string) (int, []byte, error) {
		req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, nil
	}

	// Keys to revoke, known to every node (wait=all).
	type key struct{ ID, Key string }
	keys := make([]key, 0, *revocations)
	for range *revocations {
		code, body, err := call("POST", bases[0]+"/v1/keys?wait=all", tok, `{"name":"bench","environment":"live"}`)
		if err != nil || code != 201 {
			return fmt.Errorf("creating keys: %d %s %v", code, body, err)
		}
		var k key
		json.Unmarshal(body, &k)
		keys = append(keys, k)
	}

	var lat, calls []time.Duration
	for _, k := range keys {
		start := time.Now()
		per := make([]time.Duration, len(bases))
		var wg sync.WaitGroup
		errs := make(chan error, len(bases)+1)
		for i, b := range bases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Since(start) < 10*time.Second {
					code, _, err := call("GET", b+"/v1/authz", k.Key, "")
					if err != nil {
						errs <- err
						return
					}
					if code == 401 {
						per[i] = time.Since(start)
						return
					}
					// Pace the pollers: three busy loops would take the
					// CPU from the cluster being measured.
					time.Sleep(pollEvery)
				}
				errs <- fmt.Errorf("node %s still accepted key %s after 10s", b, k.ID)
			}()
		}
		code, body, err := call("POST", bases[0]+"/v1/keys/"+k.ID+"/revoke?wait=none", tok, "")
		if err != nil || code != 200 {
			return fmt.Errorf("revoke: %d %s %v", code, body, err)
		}
		calls = append(calls, time.Since(start))
		wg.Wait()
		close(errs)
		for err := range errs {
			return err
		}
		lat = append(lat, per...)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(calls, func(i, j int) bool { return calls[i] < calls[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	quantile := func(s []time.Duration, p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	q := func(p float64) time.Duration { return quantile(lat, p) }
	r := benchResult{
		Name: "revoke_propagation_p99", Value: ms(q(0.99)), Unit: "ms",
		Extra: map[string]float64{"p50_ms": ms(q(0.50)), "max_ms": ms(lat[len(lat)-1]), "nodes": float64(len(bases)), "revocations": float64(len(keys))},
		Notes: "from the start of POST /v1/keys/{id}/revoke?wait=none until each node answers 401 for the key",
	}
	return printBench(stdout, *asJSON, r, [][]string{
		{"nodes", fmt.Sprint(len(bases))}, {"revocations", fmt.Sprint(len(keys))},
		{"samples (revocation x node)", fmt.Sprint(len(lat))},
		{"p50", fmt.Sprintf("%.3f ms", ms(q(0.50)))}, {"p99", fmt.Sprintf("%.3f ms", ms(q(0.99)))},
		{"max", fmt.Sprintf("%.3f ms", ms(lat[len(lat)-1]))},
		{"revoke call p50 / p99", fmt.Sprintf("%.3f / %.3f ms", ms(quantile(calls, 0.5)), ms(quantile(calls, 0.99)))},
	})
}
