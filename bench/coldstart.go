package bench

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// coldstart measures how long a node with N keys in the ledger takes to be
// ready (caught up, fresh, verifying) from a snapshot plus a tail.
func coldstart(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench coldstart", stderr)
	n := fs.Int("keys", 1_000_000, "keys in the ledger")
	tailN := fs.Int("tail", 1000, "events appended after the snapshot")
	records := fs.Bool("records", false, "keep admin key records too (admin node)")
	replay := fs.Bool("replay", false, "also time replays without a snapshot: on the newest checkpoint, and checking every signature")
	onlyCheckpoint := fs.Bool("replay-checkpoint-only", false, "with --replay, skip the second full replay (the first start is one)")
	bootstrap := fs.Bool("bootstrap", false, "also time a node with an empty data dir starting from the snapshot published to the fleet's Object Store bucket")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *n < 1 {
		return usageErr("--keys must be positive")
	}
	// Listening on loopback: the measured nodes are processes of their own.
	l, err := startJetStream(ctx, "keyledger-coldstart-", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.stop()
	dir, js := l.dir, l.js

	fmt.Fprintf(stderr, "publishing %d KeyCreated events…\n", *n)
	secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, rand.Reader)
	if err != nil {
		return err
	}
	if err := publishKeys(ctx, l, *n, secret); err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	snapDir := filepath.Join(dir, "snapshots")
	opts := projector.Options{Records: *records, SnapshotDir: snapDir, Logger: quiet, Keyring: l.ring}

	// Build the snapshot the way a running node does: follow, then close.
	start := time.Now()
	p := projector.New(js, opts)
	if err := p.Start(ctx); err != nil {
		return err
	}
	if err := projectorReady(ctx, p); err != nil {
		closeWithin(p.Close)
		return err
	}
	replayFirst := time.Since(start)
	if *replay {
		// An admin node's checkpoint of what it applied: what a replay
		// leans on (projector's trust.go).
		if _, err := audit.PublishCheckpoint(ctx, js, p, audit.DefaultOrigin, l.signer.NoteSigner(), p.Tree().Size(), time.Now()); err != nil {
			closeWithin(p.Close)
			return err
		}
	}
	if err := closeWithin(p.Close); err != nil {
		return err
	}
	snaps, _ := filepath.Glob(filepath.Join(snapDir, "snap-*.bin"))
	var snapSize int64
	if len(snaps) > 0 {
		if fi, err := os.Stat(snaps[0]); err == nil {
			snapSize = fi.Size()
		}
	}
	if *tailN > 0 {
		if err := publishKeys(ctx, l, *tailN, ""); err != nil {
			return err
		}
	}

	// The measured cold start: snapshot + tail → ready → a verification,
	// in a process of its own (see nodeStart), twice. The first is a
	// node's first start on this machine: its table lands on memory no
	// process touched before, which on a virtual machine the hypervisor
	// backs page by page as it is first written (on this one, most of
	// the start). The second is a restart, the figure of the fleet's
	// worst day: the node before it exited, as a restarted node's
	// predecessor did, and its memory is the machine's again. The first
	// wrote a snapshot at its close; the restart has a tail of the same
	// length to replay on it.
	node := nodeConfig{SnapshotDir: snapDir, Records: *records, Secret: secret}
	firstNode := node
	firstNode.Profile = "first_start"
	first, firstCold, err := l.runNode(ctx, firstNode)
	if err != nil {
		return err
	}
	if *tailN > 0 {
		if err := publishKeys(ctx, l, *tailN, ""); err != nil {
			return err
		}
	}
	rep, cold, err := l.runNode(ctx, node)
	if err != nil {
		return err
	}
	keys, perKey := rep.Keys, rep.HeapPerKey
	var published string
	if *bootstrap {
		// What the measured node wrote, at its close, or loaded.
		published, _ = projector.New(js, opts).NewestSnapshot()
	}

	res := Result{Name: "coldstart_seconds", Value: cold.Seconds(), Unit: "s", Extra: map[string]float64{
		"keys": float64(keys), "tail_events": float64(*tailN), "snapshot_bytes": float64(snapSize),
		"first_replay_s": replayFirst.Seconds(), "heap_bytes_per_key": perKey, "start_s": rep.StartS,
		"start_system_cpu_s": rep.SystemCPUS, "node_ready_s": rep.ReadyS,
		"first_start_s": firstCold.Seconds(), "first_start_load_s": first.StartS, "first_start_system_cpu_s": first.SystemCPUS,
	}, Notes: "a node process restarted on the snapshot (the one before it exited): until caught up on the tail, fresh, and a valid verification; first_start_s is the same on memory no process had touched"}
	rows := [][]string{
		{"keys", fmt.Sprint(keys)}, {"tail events replayed", fmt.Sprint(*tailN)},
		{"snapshot size", fmt.Sprintf("%.1f MB", float64(snapSize)/1e6)},
		{"cold start, a restart (a node process: snapshot + tail → ready)", fmt.Sprintf("%.3f s", cold.Seconds())},
		{"of which Start: loading the snapshot and the tree file", fmt.Sprintf("%.3f s", rep.StartS)},
		{"kernel CPU meanwhile", fmt.Sprintf("%.3f s", rep.SystemCPUS)},
		{"first start, on memory no process had touched", fmt.Sprintf("%.3f s", firstCold.Seconds())},
		{"of which Start", fmt.Sprintf("%.3f s", first.StartS)},
		{"kernel CPU meanwhile (first touches of fresh memory)", fmt.Sprintf("%.3f s", first.SystemCPUS)},
		{"heap per key (table, after GC)", fmt.Sprintf("%.0f B", perKey)},
		{"first start, full replay (no snapshot)", fmt.Sprintf("%.3f s", replayFirst.Seconds())},
	}
	if *bootstrap {
		download, ready, err := timeBootstrap(ctx, l, published, nodeConfig{Records: *records})
		if err != nil {
			return err
		}
		res.Extra["bootstrap_download_s"], res.Extra["bootstrap_ready_s"] = download.Seconds(), ready.Seconds()
		rows = append(rows, []string{"new node, empty data dir: download the published snapshot", fmt.Sprintf("%.3f s", download.Seconds())},
			[]string{"new node: then snapshot + tail → ready", fmt.Sprintf("%.3f s", ready.Seconds())})
	}
	if *replay {
		os.RemoveAll(snapDir)
		trusted, err := audit.Newest(ctx, js, audit.DefaultOrigin, l.ring)
		if err != nil || trusted == nil {
			return fmt.Errorf("no checkpoint to replay on: %v", err)
		}
		events := float64(trusted.Size + int64(*tailN))
		for _, r := range []struct {
			name    string
			trusted *merkle.Checkpoint
		}{{"replay_on_checkpoint", trusted}, {"full_replay", nil}} {
			if r.trusted == nil && *onlyCheckpoint {
				continue
			}
			took, err := timeReplay(ctx, js, r.name, projector.Options{Records: *records, Logger: quiet, Keyring: l.ring, Trusted: r.trusted})
			if err != nil {
				return err
			}
			res.Extra[r.name+"_s"] = took.Seconds()
			res.Extra[r.name+"_events_per_s"] = events / took.Seconds()
			rows = append(rows, []string{strings.ReplaceAll(r.name, "_", " ") + " (no snapshot)",
				fmt.Sprintf("%.3f s, %.0f events/s", took.Seconds(), events/took.Seconds())})
		}
	}
	return report(stdout, *asJSON, res, rows)
}

// timeBootstrap publishes the snapshot at path, as an admin node does,
// then times a node process with an empty data dir: fetching it from the
// bucket (Bootstrap, the download), then starting on it until ready.
func timeBootstrap(ctx context.Context, l *benchLedger, path string, node nodeConfig) (download, ready time.Duration, err error) {
	bucket, err := nats.OpenSnapshots(ctx, l.js)
	if err != nil {
		return 0, 0, err
	}
	if path == "" {
		return 0, 0, errors.New("no snapshot to publish")
	}
	from := projector.New(l.js, projector.Options{SnapshotDir: filepath.Dir(path), Keyring: l.ring})
	if err := from.PublishSnapshot(ctx, bucket, path, l.signer.NoteSigner()); err != nil {
		return 0, 0, err
	}
	node.SnapshotDir, node.Bootstrap, node.Profile = filepath.Join(l.dir, "new-node"), true, "bootstrap"
	rep, _, err := l.runNode(ctx, node)
	if err != nil {
		return 0, 0, err
	}
	return time.Duration(rep.DownloadS * float64(time.Second)), time.Duration(rep.ReadyS * float64(time.Second)), nil
}

// timeReplay is how long a projector with opts (and no snapshot) takes to
// be ready. Under KEYLEDGER_BENCH_CPUPROFILE it profiles the replay into
// the file's name + "." + name.
func timeReplay(ctx context.Context, js jetstream.JetStream, name string, opts projector.Options) (time.Duration, error) {
	runtime.GC()
	stop, err := startCPUProfile("." + name)
	if err != nil {
		return 0, err
	}
	defer stop()
	start := time.Now()
	p := projector.New(js, opts)
	if err := p.Start(ctx); err != nil {
		return 0, err
	}
	defer closeWithin(p.Close)
	if err := projectorReady(ctx, p); err != nil {
		return 0, err
	}
	if b := p.Broken(); b != "" {
		return 0, fmt.Errorf("the replay failed closed: %s", b)
	}
	return time.Since(start), nil
}

// benchLedger is an embedded JetStream (listening on loopback only if
// asked, for nodes in processes of their own) in a temp dir with
// both streams, authentication on as in production, and a signing key:
// the benchmarks that time one part (the projector, ingestion) need the
// ledger without the rest of a node.
type benchLedger struct {
	dir    string
	js     jetstream.JetStream
	nc     *natsgo.Conn
	signer *events.Signer
	ring   *events.Keyring
	url    string // the server's client URL, when it listens
	creds  string // the bench member's nkey seed file
	stop   func()
}

// runNode runs a measured node (nodeStart) on l with node's settings.
func (l *benchLedger) runNode(ctx context.Context, node nodeConfig) (nodeReport, time.Duration, error) {
	if l.url == "" {
		return nodeReport{}, 0, errors.New("the bench's server does not listen")
	}
	node.NATSURL, node.Member, node.Creds = l.url, "bench", l.creds
	node.Keyring = filepath.Join(l.dir, "keyring")
	if err := os.WriteFile(node.Keyring, l.ring.Marshal(), 0o600); err != nil {
		return nodeReport{}, 0, err
	}
	// A file, 0600: it names a credential and holds a secret to verify.
	cfg := filepath.Join(l.dir, "node.json")
	b, err := json.Marshal(node)
	if err == nil {
		err = os.WriteFile(cfg, b, 0o600)
	}
	if err != nil {
		return nodeReport{}, 0, err
	}
	return runNode(ctx, cfg)
}

func startJetStream(ctx context.Context, prefix, listen string) (*benchLedger, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	l := &benchLedger{dir: dir, stop: func() { os.RemoveAll(dir) }}
	fail := func(err error) (*benchLedger, error) { l.stop(); return nil, err }
	creds := filepath.Join(dir, "creds")
	fleet, err := nats.GenerateFleet(creds, []nats.Member{{Name: "bench", Roles: []nats.Role{nats.RoleOperator}}}, false, rand.Reader)
	if err != nil {
		return fail(err)
	}
	id, err := nats.LoadIdentity(filepath.Join(creds, "bench.nk"), "bench")
	if err != nil {
		return fail(err)
	}
	skey, vkey, err := events.GenerateSigningKey(rand.Reader, "bench")
	if err != nil {
		return fail(err)
	}
	if l.signer, err = events.NewSigner(skey); err != nil {
		return fail(err)
	}
	if l.ring, err = events.NewKeyring(vkey); err != nil {
		return fail(err)
	}
	l.creds = filepath.Join(creds, "bench.nk")
	srv, err := nats.StartServer(nats.ServerConfig{Name: "bench", StoreDir: filepath.Join(dir, "js"), Fleet: fleet, Listen: listen})
	if err != nil {
		return fail(err)
	}
	l.stop = func() { srv.Stop(); os.RemoveAll(dir) }
	if listen != "" {
		l.url = srv.ClientURL()
	}
	if l.nc, err = srv.Connect(id); err != nil {
		return fail(err)
	}
	l.stop = func() { l.nc.Close(); srv.Stop(); os.RemoveAll(dir) }
	l.js, err = jetstream.New(l.nc)
	if err == nil {
		err = nats.EnsureStreams(ctx, l.js, nats.StreamConfig{})
	}
	if err != nil {
		return fail(err)
	}
	return l, nil
}

// projectorReady waits until p is caught up and fresh. The projector has no
// notification of it, so this polls; every millisecond, because the wait
// is what coldstart measures. The bound is far above a replay of millions
// of keys on a small machine: a full replay of ten million, every
// signature checked, took 6–7 minutes here, and over 10 on a slow hour.
func projectorReady(ctx context.Context, p *projector.Projector) error {
	return waitFor(ctx, 30*time.Minute, time.Millisecond, "projector ready", p.Ready)
}

// publishKeys appends n signed KeyCreated events with random hashes (and,
// if secret is set, one for that secret) as fast as JetStream takes them.
// The benchmark's own setup skips the ledger's per-key concurrency check:
// every id is fresh. Events are built and signed on every core (signing
// costs ~25 µs each), then published in order of completion.
func publishKeys(ctx context.Context, l *benchLedger, n int, secret string) error {
	at := time.Now().UTC()
	type msg struct {
		subject string
		data    []byte
	}
	out := make(chan msg, 4096)
	errc := make(chan error, 1)
	next := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var h keyledger.Hash
			for i := range next {
				rand.Read(h[:])
				if i == 0 && secret != "" {
					h = keyledger.HashSecret(secret)
				}
				subject, b, err := signedCreate(l.signer, i, h, at)
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					continue
				}
				out <- msg{subject, b}
			}
		}()
	}
	go func() {
		defer close(next)
		for i := range n {
			select {
			case next <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(out) }()
	i := 0
	for m := range out {
		_, err := l.js.PublishAsync(m.subject, m.data)
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			// The server fell behind (a 5 M-key ledger's store grows
			// past its caches): let it catch up, then go on.
			if err = publishAcked(ctx, l.js); err == nil {
				_, err = l.js.PublishAsync(m.subject, m.data)
			}
		}
		if err != nil {
			return err
		}
		// Batches of 10,000 in flight bound the client's memory.
		if i++; i%10000 == 0 {
			if err := publishAcked(ctx, l.js); err != nil {
				return err
			}
		}
	}
	select {
	case err := <-errc:
		return err
	default:
	}
	return publishAcked(ctx, l.js)
}

// signedCreate is the benchmarks' i-th KeyCreated event of a key whose
// secret hashes to h, sealed by signer, and its subject.
func signedCreate(signer *events.Signer, i int, h keyledger.Hash, at time.Time) (string, []byte, error) {
	ev := &events.KeyCreated{
		Header:      events.NewHeader(events.TypeKeyCreated, events.NewKeyID(), "bench", at),
		Name:        "bench",
		Environment: keyledger.EnvLive,
		Permissions: []string{"all"},
		Owner:       fmt.Sprintf("owner-%d", i%1000),
		Hash:        h.String(),
		Hint:        "xxxx",
	}
	b, err := events.Encode(ev)
	if err == nil {
		b, err = signer.Seal(b)
	}
	return nats.KeySubject(ev.KeyID), b, err
}

// publishAckTimeout bounds the wait for a batch's acknowledgements: a
// JetStream that stopped answering ends the benchmark rather than hangs it.
const publishAckTimeout = time.Minute

// publishAcked waits until every asynchronous publish on js is
// acknowledged.
func publishAcked(ctx context.Context, js jetstream.JetStream) error {
	t := time.NewTimer(publishAckTimeout)
	defer t.Stop()
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("publishing keys: acknowledgements timed out after %v", publishAckTimeout)
	}
}
