package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NodeEnv, set to 1, marks a process started by a benchmark to be a
// measured node: `bench node-start` is not a command for people, and a
// test binary (which has no bench command line of its own) runs Main on
// its arguments when it finds it (see the package's TestMain).
const NodeEnv = "KEYLEDGER_BENCH_NODE"

// nodeConfig is what a measured node is told, in a file (it holds the
// path of a credential and a secret to verify: nothing for argv).
type nodeConfig struct {
	NATSURL     string `json:"nats_url"`
	Member      string `json:"member"`
	Creds       string `json:"creds"`   // the member's nkey seed file
	Keyring     string `json:"keyring"` // the ledger's signing keys, as Keyring.Marshal writes them
	SnapshotDir string `json:"snapshot_dir"`
	Records     bool   `json:"records"`
	// Bootstrap: fetch the newest published snapshot into the empty
	// SnapshotDir first, as a new node does.
	Bootstrap bool `json:"bootstrap"`
	// Secret, if set, must verify as valid once the node is ready.
	Secret string `json:"secret"`
	// Profile, if set, is what the node's CPU profile file is named
	// after beside the bench's own (see nodeStart).
	Profile string `json:"profile"`
}

// nodeReport is what a measured node prints, one JSON line, after a
// line "ready" the moment it was.
type nodeReport struct {
	DownloadS  float64 `json:"download_s"`   // Bootstrap, when asked for
	StartS     float64 `json:"start_s"`      // Start: the snapshot loaded, the tree file open
	ReadyS     float64 `json:"ready_s"`      // from Start to caught up, fresh and verifying
	SystemCPUS float64 `json:"system_cpu_s"` // the kernel's CPU during Start
	HeapPerKey float64 `json:"heap_bytes_per_key"`
	Keys       int     `json:"keys"`
}

// nodeStart is the measured node: a projector in a process of its own,
// as a node restarting or joining starts. Measured inside the process
// that published the ledger and ran the replays before it, a start
// got memory that process had freed, which the OS had taken back and
// the runtime zeroes page by page before handing it out: at ten million
// keys, seconds of page faults no restarted node pays (see README).
func nodeStart(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if os.Getenv(NodeEnv) != "1" || len(args) != 1 {
		return usageErr("node-start is run by bench coldstart")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var cfg nodeConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	id, err := nats.LoadIdentity(cfg.Creds, cfg.Member)
	if err != nil {
		return err
	}
	rb, err := os.ReadFile(cfg.Keyring)
	if err != nil {
		return err
	}
	ring, err := events.ParseKeyring(rb)
	if err != nil {
		return err
	}
	nc, err := natsgo.Connect(cfg.NATSURL, id.Options()...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// Why the node took no snapshot, if it took none, is in its log.
	var why strings.Builder
	opts := projector.Options{Records: cfg.Records, SnapshotDir: cfg.SnapshotDir, Keyring: ring,
		Logger: slog.New(slog.NewTextHandler(&why, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	var rep nodeReport
	// The measured node inherits the bench's environment: a profile of
	// coldstart is of the node, from its start to its report (the
	// others', a new node's with --bootstrap and the first start's, are
	// the file's name + "." + Profile).
	var suffix string
	if cfg.Profile != "" {
		suffix = "." + cfg.Profile
	}
	stop, err := startCPUProfile(suffix)
	if err != nil {
		return err
	}
	defer stop()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	p := projector.New(js, opts)
	if cfg.Bootstrap {
		bucket, err := nats.OpenSnapshots(ctx, js)
		if err != nil {
			return err
		}
		start := time.Now()
		seq, err := p.Bootstrap(ctx, bucket)
		if err != nil {
			return err
		}
		if seq == 0 {
			return fmt.Errorf("the new node took no published snapshot: %s", strings.TrimSpace(why.String()))
		}
		rep.DownloadS = time.Since(start).Seconds()
	}
	start := time.Now()
	sys := systemTime()
	if err := p.Start(ctx); err != nil {
		return err
	}
	rep.StartS, rep.SystemCPUS = time.Since(start).Seconds(), (systemTime() - sys).Seconds()
	defer closeWithin(p.Close)
	if err := projectorReady(ctx, p); err != nil {
		return err
	}
	if b := p.Broken(); b != "" {
		return fmt.Errorf("the node failed closed: %s", b)
	}
	if cfg.Secret != "" {
		v := verifier.New(p.Table(), verifier.Config{Environment: keyledger.EnvLive, Ready: p.Ready})
		if o := v.Verify(&verifier.Request{Key: cfg.Secret}).Outcome; o != keyledger.OutcomeValid {
			return fmt.Errorf("after cold start the known key is %v", o)
		}
	}
	rep.ReadyS = time.Since(start).Seconds()
	// The figure is taken (runNode times the first line): the rest is
	// the report, after a collection that takes a while at this size,
	// and the close, which writes a snapshot: neither is in the profile.
	stop()
	if _, err := io.WriteString(stdout, "ready\n"); err != nil {
		return err
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	rep.Keys = p.Table().Len()
	rep.HeapPerKey = float64(after.HeapAlloc-min(before.HeapAlloc, after.HeapAlloc)) / float64(max(rep.Keys, 1))
	return json.NewEncoder(stdout).Encode(rep)
}

// runNode starts a measured node (nodeStart) in a process of its own and
// returns its report and the time from starting the process to reading
// that it is ready: everything a restarted node does, the runtime's
// start included. The node's stderr, if it fails, is in the error.
func runNode(ctx context.Context, cfgPath string) (nodeReport, time.Duration, error) {
	var rep nodeReport
	exe, err := os.Executable()
	if err != nil {
		return rep, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 35*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "bench", "node-start", cfgPath)
	cmd.Env = append(os.Environ(), NodeEnv+"=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return rep, 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return rep, 0, err
	}
	r := bufio.NewReader(out)
	ready, readErr := r.ReadString('\n')
	took := time.Since(start)
	var line []byte
	if readErr == nil {
		line, readErr = r.ReadBytes('\n')
	}
	// The rest of its output (none is expected) until it exits.
	_, _ = io.Copy(io.Discard, r)
	if err := cmd.Wait(); err != nil {
		return rep, 0, fmt.Errorf("measured node: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if readErr != nil || ready != "ready\n" {
		return rep, 0, fmt.Errorf("measured node printed no report (%q, %v): %s", ready, readErr, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		return rep, 0, fmt.Errorf("measured node's report %q: %w", line, err)
	}
	return rep, took, nil
}
