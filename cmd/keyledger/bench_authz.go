package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/verifier"
)

// benchAuthz measures GET /v1/authz with a valid key against nginx
// answering `return 200`, with the same load tool and settings, one after
// the other on this machine.
func benchAuthz(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench authz", flag.ContinueOnError)
	dur := fs.Duration("duration", 5*time.Second, "how long each wrk run lasts")
	rounds := fs.Int("rounds", 3, "rounds of nginx, Go net/http and keyledger runs, alternated")
	conns := fs.Int("connections", 32, "wrk -c")
	threads := fs.Int("threads", 1, "wrk -t")
	asJSON := fs.Bool("json", false, "print one JSON object")
	noUsage := fs.Bool("no-usage", false, "record no KeyUsed events (shows what usage publishing costs)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *rounds < 1 {
		return usageErr("--rounds must be at least 1")
	}
	os.Setenv("PATH", os.Getenv("PATH")+":/usr/sbin:/sbin")
	for _, tool := range []string{"wrk", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed: run scripts/bench-deps.sh", tool)
		}
	}
	dir, err := os.MkdirTemp("", "keyledger-authz-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// nginx: return 200, as many workers as cores, access log off.
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	nginxAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	conf := filepath.Join(dir, "nginx.conf")
	os.MkdirAll(filepath.Join(dir, "logs"), 0o755)
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes auto;
pid %s/nginx.pid;
error_log %s/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %s/tmp;
  server { listen %s; location / { return 200; } }
}
`, dir, dir, dir, nginxAddr)), 0o644); err != nil {
		return err
	}
	ng := exec.CommandContext(ctx, "nginx", "-p", dir, "-c", conf, "-g", "daemon off;")
	ng.Stderr = stderr
	if err := ng.Start(); err != nil {
		return fmt.Errorf("starting nginx: %w", err)
	}
	defer func() { ng.Process.Signal(os.Interrupt); ng.Wait() }()

	// keyledger: a whole node (embedded NATS, usage publishing on).
	const token = "bench-authz-token-0123456789"
	n, err := openNode(ctx, nodeConfig{
		DataDir: filepath.Join(dir, "node"), HTTPAddr: "127.0.0.1:0", Environment: keyledger.EnvLive,
		Prefix: keyledger.DefaultPrefix, Permissions: keyledger.DefaultPermissions, TestRateLimit: verifier.DefaultTestRateLimit,
		Name: "bench", AdminToken: token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), noUsage: *noUsage,
	})
	if err != nil {
		return err
	}
	defer n.Close(context.Background())
	for !n.projector.Ready() {
		time.Sleep(time.Millisecond)
	}
	var created struct{ Key string }
	cf := &clientFlags{url: n.URL(), token: token}
	if err := cf.do(ctx, "POST", "/v1/keys", true, map[string]any{"name": "bench", "environment": "live", "permissions": []string{"workflows:read"}}, &created); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond) // let nginx finish starting

	wrk := func(url string, hdrs ...string) (float64, string, error) {
		a := []string{"-t", strconv.Itoa(*threads), "-c", strconv.Itoa(*conns), "-d", fmt.Sprintf("%ds", int(dur.Seconds())), "--latency"}
		for _, h := range hdrs {
			a = append(a, "-H", h)
		}
		out, err := exec.CommandContext(ctx, "wrk", append(a, url)...).CombinedOutput()
		if err != nil {
			return 0, string(out), fmt.Errorf("wrk: %v: %s", err, out)
		}
		m := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`).FindSubmatch(out)
		if m == nil {
			return 0, string(out), fmt.Errorf("wrk printed no Requests/sec: %s", out)
		}
		if strings.Contains(string(out), "Non-2xx") {
			return 0, string(out), fmt.Errorf("wrk saw non-2xx answers: %s", out)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v, string(out), nil
	}
	// The ceiling for any Go server on this machine: net/http answering
	// 200 with nothing else to do.
	bareLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	bare := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go bare.Serve(bareLn)
	defer bare.Close()

	if path := os.Getenv("KEYLEDGER_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	// Rounds alternate the three servers, so that a drift of the machine's
	// speed (a shared VM's neighbours) falls on all of them alike; the
	// ratio reported is the median of the rounds'.
	before := n.usage.Stats()
	var nginxAll, bareAll, klAll, ratios []float64
	var outs []string
	for round := 1; round <= *rounds; round++ {
		fmt.Fprintf(stderr, "round %d/%d: wrk → nginx return 200, Go net/http return 200, keyledger /v1/authz …\n", round, *rounds)
		nginxRPS, _, err := wrk("http://" + nginxAddr + "/")
		if err != nil {
			return err
		}
		bareRPS, _, err := wrk("http://" + bareLn.Addr().String() + "/")
		if err != nil {
			return err
		}
		klRPS, out, err := wrk(n.URL()+"/v1/authz", "Authorization: Bearer "+created.Key, "X-Required-Permission: workflows:read")
		if err != nil {
			return err
		}
		nginxAll, bareAll, klAll = append(nginxAll, nginxRPS), append(bareAll, bareRPS), append(klAll, klRPS)
		ratios = append(ratios, klRPS/nginxRPS)
		outs = append(outs, out)
	}
	// The p99 shown is that of the round closest to the median ratio.
	med, best := median(ratios), 0
	for i, r := range ratios {
		if math.Abs(r-med) < math.Abs(ratios[best]-med) {
			best = i
		}
	}
	klOut := outs[best]
	nginxRPS, bareRPS, klRPS := median(nginxAll), median(bareAll), median(klAll)
	flushCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for n.usage.Stats().Buffered > 0 && flushCtx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	after := n.usage.Stats()
	p99 := ""
	if m := regexp.MustCompile(`99%\s+(\S+)`).FindStringSubmatch(klOut); m != nil {
		p99 = m[1]
	}
	ratio := med
	res := benchResult{Name: "authz_vs_nginx_ratio", Value: ratio, Unit: "ratio", Extra: map[string]float64{
		"keyledger_rps": klRPS, "nginx_rps": nginxRPS, "go_net_http_rps": bareRPS, "go_net_http_ratio": median(ratioOf(bareAll, nginxAll)),
		"ratio_min": slices.Min(ratios), "ratio_max": slices.Max(ratios), "rounds": float64(*rounds),
		"usage_published": float64(after.Published - before.Published), "usage_shed": float64(after.Shed - before.Shed),
		"usage_failed": float64(after.Failed - before.Failed),
	}, Notes: fmt.Sprintf("wrk -t%d -c%d -d%s, %d rounds alternating nginx, Go net/http and keyledger, median ratio; valid key with a required permission; usage events published: %v", *threads, *conns, *dur, *rounds, !*noUsage)}
	if *asJSON {
		b, _ := json.Marshal(res)
		_, err := fmt.Fprintln(stdout, string(b))
		return err
	}
	return printTable(stdout, []string{"METRIC", "VALUE"}, [][]string{
		{"nginx return 200", fmt.Sprintf("%.0f req/s", nginxRPS)},
		{"Go net/http return 200 (ceiling)", fmt.Sprintf("%.0f req/s (%.2f × nginx)", bareRPS, median(ratioOf(bareAll, nginxAll)))},
		{"keyledger GET /v1/authz (valid key)", fmt.Sprintf("%.0f req/s (p99 %s)", klRPS, p99)},
		{"ratio (median of rounds)", fmt.Sprintf("%.2f (rounds %s)", ratio, formatAll(ratios, "%.2f"))},
		{"KeyUsed published / shed / failed", fmt.Sprintf("%d / %d / %d", after.Published-before.Published, after.Shed-before.Shed, after.Failed-before.Failed)},
		{"load", fmt.Sprintf("wrk -t%d -c%d -d%s, %d rounds alternating the servers, same machine; req/s are medians", *threads, *conns, *dur, *rounds)},
	})
}

// median returns the median of xs (the mean of the middle two for an even
// count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratioOf returns a[i]/b[i] for each i.
func ratioOf(a, b []float64) []float64 {
	r := make([]float64, len(a))
	for i := range a {
		r[i] = a[i] / b[i]
	}
	return r
}

func formatAll(xs []float64, format string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(parts, " ")
}
