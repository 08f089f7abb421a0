package bench

import (
	"context"
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
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/client"
	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/verifier"
)

// authz measures GET /v1/authz with a valid key against nginx answering
// `return 200`, with the same load tool and settings, one after the other
// on this machine.
func authz(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench authz", stderr)
	dur := fs.Duration("duration", 5*time.Second, "how long each wrk run lasts")
	rounds := fs.Int("rounds", 3, "rounds of nginx, Go net/http and keyledger runs, alternated")
	conns := fs.Int("connections", 32, "wrk -c")
	threads := fs.Int("threads", 1, "wrk -t")
	asJSON := fs.Bool("json", false, "print one JSON object")
	noUsage := fs.Bool("no-usage", false, "record no KeyUsed events (shows what usage publishing costs)")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *rounds < 1 {
		return usageErr("--rounds must be at least 1")
	}
	wrkPath, err := findTool("wrk", "/usr/bin/wrk", "/usr/local/bin/wrk")
	if err != nil {
		return err
	}
	nginxPath, err := findTool("nginx", "/usr/sbin/nginx", "/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "keyledger-authz-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// nginx: return 200, as many workers as cores, access log off.
	nginxAddr, stopNginx, err := startNginx(ctx, nginxPath, dir, stderr)
	if err != nil {
		return err
	}
	defer stopNginx()

	// keyledger: a whole node (embedded NATS, usage publishing on).
	const token = "bench-authz-token-0123456789"
	n, err := node.Open(ctx, node.Config{
		DataDir: filepath.Join(dir, "node"), HTTPAddr: "127.0.0.1:0", Environment: keyledger.EnvLive,
		Prefix: keyledger.DefaultPrefix, Permissions: keyledger.DefaultPermissions, TestRateLimit: verifier.DefaultTestRateLimit,
		Name: "bench", AdminToken: token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NoUsage: *noUsage,
	})
	if err != nil {
		return err
	}
	defer closeWithin(n.Close)
	if err := waitFor(ctx, 30*time.Second, time.Millisecond, "the node's projector ready", n.Projector().Ready); err != nil {
		return err
	}
	adminAPI := &client.Client{BaseURL: n.URL(), Token: token, HTTP: &http.Client{Timeout: 30 * time.Second}}
	created, err := adminAPI.CreateKey(ctx, admin.CreateRequest{Name: "bench", Environment: keyledger.EnvLive, Permissions: []string{"workflows:read"}}, client.WriteOptions{})
	if err != nil {
		return err
	}

	wrk := func(url string, hdrs ...string) (float64, string, error) {
		a := []string{"-t", strconv.Itoa(*threads), "-c", strconv.Itoa(*conns), "-d", fmt.Sprintf("%ds", int(dur.Seconds())), "--latency"}
		for _, h := range hdrs {
			a = append(a, "-H", h)
		}
		// wrk ends by itself after -d; the bound is for a wrk that
		// cannot connect or hangs.
		wctx, cancel := context.WithTimeout(ctx, *dur+time.Minute)
		defer cancel()
		out, err := exec.CommandContext(wctx, wrkPath, append(a, url)...).CombinedOutput()
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

	stop, err := startCPUProfile("")
	if err != nil {
		return err
	}
	defer stop()
	// Rounds alternate the three servers, so that a drift of the machine's
	// speed (a shared VM's neighbours) falls on all of them alike; the
	// ratio reported is the median of the rounds'.
	usage := n.Usage()
	before := usage.Stats()
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
		klRPS, out, err := wrk(n.URL()+"/v1/authz", "Authorization: Bearer "+created.Secret, "X-Required-Permission: workflows:read")
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
	// The usage counters are read once the buffer has drained, so that
	// they count what the load produced; a publisher that cannot drain is
	// reported with the figures rather than failing them.
	if err := waitFor(ctx, 30*time.Second, 10*time.Millisecond, "usage events published", func() bool { return usage.Stats().Buffered == 0 }); err != nil {
		fmt.Fprintf(stderr, "bench authz: %v; usage counters below are partial\n", err)
	}
	after := usage.Stats()
	p99 := ""
	if m := regexp.MustCompile(`99%\s+(\S+)`).FindStringSubmatch(klOut); m != nil {
		p99 = m[1]
	}
	ratio := med
	res := Result{Name: "authz_vs_nginx_ratio", Value: ratio, Unit: "ratio", Extra: map[string]float64{
		"keyledger_rps": klRPS, "nginx_rps": nginxRPS, "go_net_http_rps": bareRPS, "go_net_http_ratio": median(ratioOf(bareAll, nginxAll)),
		"ratio_min": slices.Min(ratios), "ratio_max": slices.Max(ratios), "rounds": float64(*rounds),
		"usage_published": float64(after.Published - before.Published), "usage_shed": float64(after.Shed - before.Shed),
		"usage_failed": float64(after.Failed - before.Failed),
	}, Notes: fmt.Sprintf("wrk -t%d -c%d -d%s, %d rounds alternating nginx, Go net/http and keyledger, median ratio; valid key with a required permission; usage events published: %v", *threads, *conns, *dur, *rounds, !*noUsage)}
	return report(stdout, *asJSON, res, [][]string{
		{"nginx return 200", fmt.Sprintf("%.0f req/s", nginxRPS)},
		{"Go net/http return 200 (ceiling)", fmt.Sprintf("%.0f req/s (%.2f × nginx)", bareRPS, median(ratioOf(bareAll, nginxAll)))},
		{"keyledger GET /v1/authz (valid key)", fmt.Sprintf("%.0f req/s (p99 %s)", klRPS, p99)},
		{"ratio (median of rounds)", fmt.Sprintf("%.2f (rounds %s)", ratio, formatAll(ratios, "%.2f"))},
		{"KeyUsed published / shed / failed", fmt.Sprintf("%d / %d / %d", after.Published-before.Published, after.Shed-before.Shed, after.Failed-before.Failed)},
		{"load", fmt.Sprintf("wrk -t%d -c%d -d%s, %d rounds alternating the servers, same machine; req/s are medians", *threads, *conns, *dur, *rounds)},
	})
}

// findTool returns the path of a tool: from PATH, else the first of
// wellKnown that exists. Debian installs nginx to /usr/sbin, which a
// non-root PATH often lacks; looking there explicitly spares the user a
// PATH change, and the benchmark from making one for its whole process.
func findTool(name string, wellKnown ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, p := range wellKnown {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not installed: run scripts/bench-deps.sh", name)
}

// nginxStartTimeout bounds how long nginx may take to answer its first
// request.
const nginxStartTimeout = 20 * time.Second

// startNginx runs nginx in the foreground under dir, answering `return
// 200` on a free loopback port, and returns once it has answered a
// request: the first wrk run must measure a running server, not its
// start. stop ends it (fast shutdown, then a kill if it lingers).
func startNginx(ctx context.Context, nginxPath, dir string, stderr io.Writer) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr = ln.Addr().String()
	ln.Close()
	conf := filepath.Join(dir, "nginx.conf")
	errorLog := filepath.Join(dir, "logs", "error.log")
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes auto;
pid %s/nginx.pid;
error_log %s;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %s/tmp;
  server { listen %s; location / { return 200; } }
}
`, dir, errorLog, dir, addr)), 0o644); err != nil {
		return "", nil, err
	}
	ng := exec.Command(nginxPath, "-p", dir, "-c", conf, "-g", "daemon off;")
	ng.Stderr = stderr
	if err := ng.Start(); err != nil {
		return "", nil, fmt.Errorf("starting nginx: %w", err)
	}
	exited := make(chan struct{})
	go func() { ng.Wait(); close(exited) }()
	stop = func() {
		ng.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			ng.Process.Kill()
			<-exited
		}
	}
	if err := waitAnswers(ctx, "http://"+addr+"/", nginxStartTimeout, exited); err != nil {
		stop()
		return "", nil, fmt.Errorf("nginx on %s: %w (see %s)", addr, err, errorLog)
	}
	return addr, stop, nil
}

// waitAnswers waits until url answers 200, within timeout and ctx, or
// until exited is closed (the server gave up: no use waiting on).
func waitAnswers(ctx context.Context, url string, timeout time.Duration, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A fresh connection per attempt, none left open for the benchmark.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: time.Second}
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("answered %s", resp.Status)
		}
		last = err
		select {
		case <-exited:
			return fmt.Errorf("exited before answering")
		case <-ctx.Done():
			return fmt.Errorf("no answer within %v: %v", timeout, last)
		case <-t.C:
		}
	}
}

// startCPUProfile profiles the process, until stop, into the file that
// KEYLEDGER_BENCH_CPUPROFILE names with suffix appended, to see where a
// benchmark's time goes. Without that variable it profiles nothing.
// stop may be called more than once.
func startCPUProfile(suffix string) (stop func(), err error) {
	path := os.Getenv("KEYLEDGER_BENCH_CPUPROFILE")
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path + suffix)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }, nil
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

// formatAll formats each of xs, space-separated.
func formatAll(xs []float64, format string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(parts, " ")
}
