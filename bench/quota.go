package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/client"
	"github.com/keyledger/keyledger/node"
)

// quotaBench hammers one owner's plan quota from every node of a local
// cluster and reports what passed against the limit (the overshoot, which
// the design says is never above 0, and the shortfall, at most the leases
// the nodes hold), with the accepted rate beside that of an unmetered key.
func quotaBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench quota", stderr)
	nodes := fs.Int("nodes", 3, "cluster size to start")
	limit := fs.Int64("quota", 100_000, "the plan's monthly quota")
	workers := fs.Int("workers", 8, "concurrent requesters per node")
	leaseMax := fs.Int64("lease-max", 1000, "the nodes' --lease-max")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *nodes < 1 || *limit < 1 || *workers < 1 || *leaseMax < 1 {
		return usageErr("--nodes, --quota, --workers and --lease-max must be positive")
	}
	bases, stop, err := localCluster(ctx, stderr, *nodes, func(cfgs []node.Config) {
		for i := range cfgs {
			cfgs[i].LeaseMax, cfgs[i].FleetSize, cfgs[i].NoUsage = *leaseMax, *nodes, true
		}
	})
	if err != nil {
		return err
	}
	defer stop()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4 * *workers}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	api := &client.Client{BaseURL: bases[0], Token: benchToken, HTTP: hc}
	wait := client.WriteOptions{Wait: admin.WaitAll}
	if _, err := api.CreatePlan(ctx, keyledger.Plan{Name: "bench", MonthlyQuota: *limit}, wait); err != nil {
		return err
	}
	if _, err := api.PutOwner(ctx, "metered", admin.OwnerRequest{Plan: "bench"}, wait); err != nil {
		return err
	}
	metered, err := api.CreateKey(ctx, admin.CreateRequest{Name: "metered", Environment: keyledger.EnvLive, Owner: "metered"}, wait)
	if err != nil {
		return err
	}
	plain, err := api.CreateKey(ctx, admin.CreateRequest{Name: "plain", Environment: keyledger.EnvLive, Owner: "plain"}, wait)
	if err != nil {
		return err
	}

	// run sends n requests with key across the nodes and returns the 200s,
	// the other answers, and the time taken.
	run := func(key string, n int64) (ok, other int64, took time.Duration, err error) {
		var left, okN, otherN atomic.Int64
		left.Store(n)
		var wg sync.WaitGroup
		var once sync.Once
		start := time.Now()
		for _, base := range bases {
			for range *workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for left.Add(-1) >= 0 && ctx.Err() == nil {
						code, rerr := authzStatus(ctx, hc, base, key)
						if rerr != nil {
							once.Do(func() { err = rerr })
							return
						}
						if code == http.StatusOK {
							okN.Add(1)
						} else {
							otherN.Add(1)
						}
					}
				}()
			}
		}
		wg.Wait()
		return okN.Load(), otherN.Load(), time.Since(start), err
	}
	total := *limit + *limit/5
	fmt.Fprintf(stderr, "hammering a quota of %d with %d requests from %d nodes…\n", *limit, total, *nodes)
	ok, refused, took, err := run(metered.Secret, total)
	if err != nil {
		return err
	}
	plainOK, _, plainTook, err := run(plain.Secret, total)
	if err != nil {
		return err
	}
	q, err := api.OwnerQuota(ctx, "metered")
	if err != nil {
		return err
	}
	rate := func(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() }
	r := Result{
		Name: "quota_overshoot", Value: float64(ok - *limit), Unit: "verifications",
		Extra: map[string]float64{"accepted": float64(ok), "limit": float64(*limit), "refused": float64(refused),
			"shortfall": float64(*limit - ok), "counter_used": float64(q.Used), "nodes": float64(*nodes),
			"metered_req_per_s": rate(total, took), "unmetered_req_per_s": rate(plainOK, plainTook), "lease_max": float64(*leaseMax)},
		Notes: "accepted minus the plan's quota when every node is hammered past it (the design's bound: ≤ 0; the shortfall ≤ nodes × lease_max)",
	}
	return report(stdout, *asJSON, r, [][]string{
		{"nodes", fmt.Sprint(*nodes)}, {"quota", fmt.Sprint(*limit)}, {"requests", fmt.Sprint(total)},
		{"accepted", fmt.Sprint(ok)}, {"overshoot", fmt.Sprint(ok - *limit)}, {"shortfall", fmt.Sprint(*limit - ok)},
		{"counter used", fmt.Sprint(q.Used)},
		{"metered req/s (all answers)", fmt.Sprintf("%.0f", rate(total, took))},
		{"unmetered req/s", fmt.Sprintf("%.0f", rate(plainOK, plainTook))},
	})
}

// authzStatus is one forward-auth request's status.
func authzStatus(ctx context.Context, hc *http.Client, base, key string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/authz", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}
