package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/keyledger/keyledger/internal/cli"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/client"
	"github.com/keyledger/keyledger/node"
)

// revokeDeadline is how long a node may keep accepting a revoked key
// before the benchmark gives up on it: far above any figure worth
// reporting, and a bound on every poller.
const revokeDeadline = 10 * time.Second

// revoke measures how long after the start of a revoke call every node
// refuses the key over HTTP.
func revoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench revoke", stderr)
	nodes := fs.Int("nodes", 3, "cluster size to start")
	revocations := fs.Int("revocations", 200, "how many keys to revoke")
	urls := fs.String("urls", "", "use running nodes instead (comma-separated base URLs; the first serves the admin API)")
	token := fs.String("token", os.Getenv("KEYLEDGER_ADMIN_TOKEN"), "admin token with --urls")
	asJSON := fs.Bool("json", false, "print one JSON object")
	pollEvery := 0 * time.Millisecond
	fs.DurationVar(&pollEvery, "poll", 250*time.Microsecond, "pause between a node's polls (each poll is a verification, and a KeyUsed event)")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *nodes < 1 || *revocations < 1 {
		return usageErr("--nodes and --revocations must be positive")
	}
	var bases []string
	tok := *token
	if *urls != "" {
		if bases = cli.SplitList(*urls); len(bases) == 0 {
			return usageErr("--urls names no URL")
		}
	} else {
		var stop func()
		var err error
		tok = benchToken
		if bases, stop, err = localCluster(ctx, stderr, *nodes, nil); err != nil {
			return err
		}
		defer stop()
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	adminAPI := &client.Client{BaseURL: bases[0], Token: tok, HTTP: hc}

	// Keys to revoke, known to every node (wait=all).
	keys := make([]*admin.Created, 0, *revocations)
	for range *revocations {
		k, err := adminAPI.CreateKey(ctx, admin.CreateRequest{Name: "bench", Environment: keyledger.EnvLive}, client.WriteOptions{Wait: admin.WaitAll})
		if err != nil {
			return fmt.Errorf("creating keys: %w", err)
		}
		keys = append(keys, k)
	}

	// authz is a poll: one verification, 401 once the node refuses the key.
	// It is a bare request rather than a client call because it is what
	// is measured, and the figures are those of this loop.
	authz := func(ctx context.Context, base, key string) (int, error) { return authzStatus(ctx, hc, base, key) }

	var lat, calls []time.Duration
	stop, err := startCPUProfile("")
	if err != nil {
		return err
	}
	defer stop()
	for _, k := range keys {
		per, call, err := revokeOne(ctx, adminAPI, bases, k, pollEvery, authz)
		if err != nil {
			return err
		}
		calls = append(calls, call)
		lat = append(lat, per...)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(calls, func(i, j int) bool { return calls[i] < calls[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	quantile := func(s []time.Duration, p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	q := func(p float64) time.Duration { return quantile(lat, p) }
	r := Result{
		Name: "revoke_propagation_p99", Value: ms(q(0.99)), Unit: "ms",
		Extra: map[string]float64{"p50_ms": ms(q(0.50)), "max_ms": ms(lat[len(lat)-1]), "nodes": float64(len(bases)), "revocations": float64(len(keys))},
		Notes: "from the start of POST /v1/keys/{id}/revoke?wait=none until each node answers 401 for the key",
	}
	return report(stdout, *asJSON, r, [][]string{
		{"nodes", fmt.Sprint(len(bases))}, {"revocations", fmt.Sprint(len(keys))},
		{"samples (revocation x node)", fmt.Sprint(len(lat))},
		{"p50", fmt.Sprintf("%.3f ms", ms(q(0.50)))}, {"p99", fmt.Sprintf("%.3f ms", ms(q(0.99)))},
		{"max", fmt.Sprintf("%.3f ms", ms(lat[len(lat)-1]))},
		{"revoke call p50 / p99", fmt.Sprintf("%.3f / %.3f ms", ms(quantile(calls, 0.5)), ms(quantile(calls, 0.99)))},
	})
}

// benchToken is the admin token of the clusters the benchmarks start.
const benchToken = "bench-token-0123456789abcdef"

// localCluster starts n admin nodes on loopback as one cluster (R3 from
// three nodes, sync always), edited by edit if set, and waits until the
// first hears every node's heartbeat: wait=all must mean every node. It
// returns the nodes' base URLs and what stops them.
func localCluster(ctx context.Context, stderr io.Writer, n int, edit func([]node.Config)) ([]string, func(), error) {
	dir, err := os.MkdirTemp("", "keyledger-bench-")
	if err != nil {
		return nil, nil, err
	}
	cfgs, err := node.ClusterConfigs(n, dir, benchToken, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	if edit != nil {
		edit(cfgs)
	}
	fmt.Fprintf(stderr, "starting a %d-node cluster (R%d, sync always) on loopback…\n", n, min(n, 3))
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	c, err := node.StartCluster(sctx, cfgs)
	cancel()
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	stop := func() {
		closeWithin(func(ctx context.Context) error { c.Close(ctx); return nil })
		os.RemoveAll(dir)
	}
	var bases []string
	for _, nd := range c.Nodes {
		bases = append(bases, nd.URL())
	}
	// A node not heard from yet could get a key after its pollers
	// started, and its 401 for a key it never knew would pass for a
	// revocation.
	fleet := c.Nodes[0].Fleet()
	if err := waitFor(ctx, 30*time.Second, 20*time.Millisecond, fmt.Sprintf("heartbeats of all %d nodes", n),
		func() bool { return len(fleet.Live()) >= n }); err != nil {
		stop()
		return nil, nil, err
	}
	return bases, stop, nil
}

// revokeOne revokes k (wait=none) while one poller per node verifies it,
// and returns, per node, the time from the start of the revoke call to the
// node's first 401, and the time the call itself took. The pollers are
// started first, so that a fast node's refusal is not missed, and every
// one of them has ended when revokeOne returns.
func revokeOne(ctx context.Context, adminAPI *client.Client, bases []string, k *admin.Created, pollEvery time.Duration,
	authz func(ctx context.Context, base, key string) (int, error)) ([]time.Duration, time.Duration, error) {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	per := make([]time.Duration, len(bases))
	errs := make([]error, len(bases))
	var wg sync.WaitGroup
	for i, b := range bases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < revokeDeadline {
				code, err := authz(pctx, b, k.Secret)
				if err != nil {
					errs[i] = err
					return
				}
				if code == http.StatusUnauthorized {
					per[i] = time.Since(start)
					return
				}
				// Pace the pollers: three busy loops would take the
				// CPU from the cluster being measured.
				time.Sleep(pollEvery)
			}
			errs[i] = fmt.Errorf("node %s still accepted key %s after %v", b, k.ID, revokeDeadline)
		}()
	}
	_, err := adminAPI.RevokeKey(ctx, k.ID, "", client.WriteOptions{Wait: admin.WaitNone})
	call := time.Since(start)
	if err != nil {
		cancel()
		wg.Wait()
		return nil, 0, fmt.Errorf("revoke: %w", err)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	return per, call, nil
}
