package audit_test

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/projector"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// witnessKey returns a deterministic witness key named name.
func witnessKey(tb testing.TB, name string, seed byte) (note.Signer, note.Verifier, string) {
	tb.Helper()
	skey, vkey, err := note.GenerateKey(mrand.NewChaCha8([32]byte{seed, 'w'}), name+"/witness")
	if err != nil {
		tb.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		tb.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		tb.Fatal(err)
	}
	return s, v, vkey
}

// mustFollow starts a projector on js, closed when the test ends.
func mustFollow(tb testing.TB, env *natstest.Env, js jetstream.JetStream, name string, opts ...func(*projector.Options)) *projector.Projector {
	tb.Helper()
	o := projector.Options{Keyring: env.Keyring, Name: name}
	for _, f := range opts {
		f(&o)
	}
	p := projector.New(js, o)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Close(ctx)
	})
	return p
}

// mustAuditor opens an auditor, closed when the test ends.
func mustAuditor(tb testing.TB, cfg audit.Config) *audit.Auditor {
	tb.Helper()
	a, err := audit.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.Close(ctx)
	})
	return a
}

// waitFor waits, on the auditor's change notifications, until cond holds.
func waitFor(tb testing.TB, a *audit.Auditor, what string, cond func() bool) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		ch := a.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			tb.Fatalf("timed out waiting for %s", what)
		}
	}
}

// publishEvents stores n signed KeyCreated events (every tenth followed
// by its revoke) and returns the last sequence.
func publishEvents(tb testing.TB, env *natstest.Env, n int, seed byte) uint64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids := eventstest.NewIDs(seed)
	var futures []jetstream.PubAckFuture
	for i := range n {
		id := fmt.Sprintf("key_%c%05d", 'a'+seed%26, i)
		var ev events.Event = eventstest.Created(tb, ids, id)
		if i%10 == 9 {
			ev = eventstest.Revoked(tb, ids, fmt.Sprintf("key_%c%05d", 'a'+seed%26, i-1), "rotated")
		}
		f, err := env.JS.PublishAsync(nats.KeySubject(ev.Head().KeyID), env.Signer.MustSeal(tb, ev))
		if err != nil {
			tb.Fatal(err)
		}
		futures = append(futures, f)
	}
	var last uint64
	for _, f := range futures {
		select {
		case ack := <-f.Ok():
			last = max(last, ack.Sequence)
		case err := <-f.Err():
			tb.Fatal(err)
		case <-ctx.Done():
			tb.Fatal("publishing timed out")
		}
	}
	return last
}

// storedEvents reads KEYS' stored bytes, in sequence order.
func storedEvents(tb testing.TB, env *natstest.Env, last uint64) [][]byte {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := env.JS.Stream(ctx, nats.KeysStream)
	if err != nil {
		tb.Fatal(err)
	}
	var out [][]byte
	for seq := uint64(1); seq <= last; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, m.Data)
	}
	return out
}

// libraryRoot computes the root with tlog alone, from the record hashes.
func libraryRoot(tb testing.TB, leaves [][]byte) tlog.Hash {
	tb.Helper()
	var stored []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	for i, l := range leaves {
		hs, err := tlog.StoredHashes(int64(i), l, r)
		if err != nil {
			tb.Fatal(err)
		}
		stored = append(stored, hs...)
	}
	h, err := tlog.TreeHash(int64(len(leaves)), r)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// fleet is an admin and a verifier following one server, each with an
// auditor.
type fleet struct {
	env               *natstest.Env
	admin, verifier   *audit.Auditor
	adminP, verifierP *projector.Projector
	witnesses         note.Verifiers
	witnessesText     string
}

func mustFleet(tb testing.TB, env *natstest.Env, onDivergence func(node, detail string)) *fleet {
	tb.Helper()
	wa, va, vka := witnessKey(tb, natstest.Admin, 1)
	wv, vv, vkv := witnessKey(tb, natstest.Verifier, 2)
	f := &fleet{env: env, witnesses: note.VerifierList(va, vv), witnessesText: vka + "\n" + vkv + "\n"}
	_, ajs := env.ConnectAs(tb, natstest.Admin)
	_, vjs := env.ConnectAs(tb, natstest.Verifier)
	f.adminP = mustFollow(tb, env, ajs, natstest.Admin)
	f.verifierP = mustFollow(tb, env, vjs, natstest.Verifier)
	f.admin = mustAuditor(tb, audit.Config{JS: ajs, Ledger: f.adminP, Name: natstest.Admin, Keyring: env.Keyring,
		Signer: env.Signer.NoteSigner(), Witness: wa, Witnesses: f.witnesses, WitnessesText: f.witnessesText,
		Every: 1 << 40, Interval: 1000 * time.Hour, OnDivergence: onDivergence})
	f.verifier = mustAuditor(tb, audit.Config{JS: vjs, Ledger: f.verifierP, Name: natstest.Verifier, Keyring: env.Keyring,
		Witness: wv, Interval: 1000 * time.Hour})
	return f
}

// checkpoint publishes the checkpoint of the first n events from the
// admin and waits until both nodes know it and the verifier cosigned it.
func (f *fleet) checkpoint(tb testing.TB, n int64) audit.Signed {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.adminP.WaitApplied(ctx, uint64(n)); err != nil {
		tb.Fatal(err)
	}
	if _, err := f.admin.Publish(ctx, n, eventstest.FixedAt); err != nil {
		tb.Fatal(err)
	}
	var s audit.Signed
	waitFor(tb, f.admin, fmt.Sprintf("the verifier's cosignature of %d", n), func() bool {
		var err error
		s, err = f.admin.At(n)
		return err == nil && len(s.Cosigners) == 1
	})
	return s
}

func TestAuditor(t *testing.T) {
	env := natstest.MustStart(t)
	const n = 10_000
	last := publishEvents(t, env, n, 1)
	f := mustFleet(t, env, nil)
	half := f.checkpoint(t, n/2)
	full := f.checkpoint(t, n)
	leaves := storedEvents(t, env, last)

	t.Run("the root is the library's, computed independently", func(t *testing.T) {
		if full.Size != int64(last) || full.Root != libraryRoot(t, leaves) {
			t.Fatalf("checkpoint %d %s, library root of %d events %s", full.Size, full.Root, len(leaves), libraryRoot(t, leaves))
		}
		if half.Root != libraryRoot(t, leaves[:n/2]) {
			t.Fatal("the half-way checkpoint's root is not the library's")
		}
	})
	t.Run("the note carries the publisher's signature and the verifier's cosignature", func(t *testing.T) {
		cp, signers, err := audit.OpenCheckpoint(full.Note, audit.DefaultOrigin, env.Keyring)
		if err != nil || cp.Size != full.Size || len(signers) != 1 || signers[0] != natstest.Admin {
			t.Fatalf("open with the keyring: %+v %v %v", cp, signers, err)
		}
		wn, err := note.Open(full.Note, f.witnesses)
		if err != nil || len(wn.Sigs) != 1 || wn.Sigs[0].Name != natstest.Verifier+"/witness" {
			t.Fatalf("open with the witnesses: %v", err)
		}
		if vs, ok := f.verifier.Latest(); !ok || vs.Size != full.Size || vs.Root != full.Root {
			t.Fatalf("the verifier's latest: %+v", vs)
		}
		if st := f.admin.Stats(); st.LatestSize != full.Size || st.TreeSize != full.Size || st.Cosigners != 1 || st.Divergences != 0 {
			t.Fatalf("the admin's stats: %+v", st)
		}
	})
	t.Run("every event's inclusion proof verifies, and fails for a modified event", func(t *testing.T) {
		tree := f.verifierP.Tree()
		for seq := uint64(1); seq <= last; seq++ {
			p, err := audit.ProveEvent(tree, full.Size, seq)
			if err != nil {
				t.Fatal(err)
			}
			if err := merkle.CheckLeaf(p.Proof, full.Size, full.Root, p.Index, leaves[seq-1]); err != nil {
				t.Fatalf("event %d: %v", seq, err)
			}
			if seq%101 == 0 {
				bad := append([]byte(" "), leaves[seq-1]...)
				if merkle.CheckLeaf(p.Proof, full.Size, full.Root, p.Index, bad) == nil {
					t.Fatalf("a modified event %d proved included", seq)
				}
			}
		}
	})
	t.Run("consistency between the checkpoints verifies, and fails if an earlier event changed", func(t *testing.T) {
		p, err := f.adminP.Tree().ProveConsistency(half.Size, full.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := merkle.CheckConsistency(p, full.Size, full.Root, half.Size, half.Root); err != nil {
			t.Fatal(err)
		}
		forged := append([][]byte(nil), leaves...)
		forged[17] = bytes.Replace(forged[17], []byte(`"acme"`), []byte(`"evil"`), 1)
		if merkle.CheckConsistency(p, full.Size, libraryRoot(t, forged), half.Size, half.Root) == nil {
			t.Fatal("a history with event 18 changed proved consistent")
		}
	})
	t.Run("attack: a cosignature with a forged line for another witness is not merged", func(t *testing.T) {
		wv, _, _ := witnessKey(t, natstest.Verifier, 2)
		msg, err := note.Sign(&note.Note{Text: full.Checkpoint.Body()}, wv)
		if err != nil {
			t.Fatal(err)
		}
		forged := string(msg) + "\u2014 " + natstest.Admin + "/witness AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
		_, vjs := env.ConnectAs(t, natstest.Verifier)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := vjs.Publish(ctx, nats.CosignSubjectPrefix+natstest.Verifier, []byte(forged)); err != nil {
			t.Fatal(err)
		}
		// AUDIT is handled in order: once a later checkpoint is in,
		// the forged cosignature was seen.
		publishEvents(t, env, 1, 9)
		f.checkpoint(t, int64(last)+1)
		s, err := f.admin.At(full.Size)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := note.Open(s.Note, f.witnesses); err != nil || len(s.Cosigners) != 1 {
			t.Fatalf("the served note: %v, cosigners %v", err, s.Cosigners)
		}
	})
	t.Run("attack: a verifier cannot publish a checkpoint or another node's cosignature", func(t *testing.T) {
		_, vjs := env.ConnectAs(t, natstest.Verifier)
		forged, err := merkle.Checkpoint{Origin: audit.DefaultOrigin, Size: 1, Root: tlog.RecordHash([]byte("x"))}.Sign(env.Signer.NoteSigner())
		if err != nil {
			t.Fatal(err)
		}
		for _, subj := range []string{nats.CheckpointSubject, nats.CosignSubjectPrefix + natstest.Admin} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err := vjs.Publish(ctx, subj, forged)
			cancel()
			if err == nil {
				t.Fatalf("a verifier published on %s", subj)
			}
		}
		if _, err := f.verifier.Publish(context.Background(), 1, time.Now()); err == nil {
			t.Fatal("a node without a signing key published a checkpoint")
		}
	})
}

// TestAuditor_splitView shows one node a different history than the
// fleet's: two events swapped. Both are genuinely signed, so the node's
// projector applies them; only the checkpoint reveals it.
func TestAuditor_splitView(t *testing.T) {
	fleetEnv := natstest.MustStart(t)
	const n = 40
	last := publishEvents(t, fleetEnv, n, 2)
	seen := make(chan string, 16)
	f := mustFleet(t, fleetEnv, func(node, detail string) { seen <- node })
	cp := f.checkpoint(t, int64(last))

	// The split view: another server with the same events but 10 and
	// 11 swapped (keys 10 and 11 are unrelated creates).
	other := natstest.MustStart(t)
	leaves := storedEvents(t, fleetEnv, last)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, _ := fleetEnv.JS.Stream(ctx, nats.KeysStream)
	for seq := uint64(1); seq <= last; seq++ {
		from := seq
		switch seq {
		case 11:
			from = 12
		case 12:
			from = 11
		}
		m, err := s.GetMsg(ctx, from)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.JS.Publish(ctx, m.Subject, leaves[from-1]); err != nil {
			t.Fatal(err)
		}
	}
	wv, _, _ := witnessKey(t, natstest.Verifier, 2)
	diverged := make(chan string, 16)
	p := mustFollow(t, other, other.JS, natstest.Verifier, func(o *projector.Options) {
		o.OnReject = func(r projector.Rejection) { diverged <- r.Reason }
	})
	_, ojs := other.ConnectAs(t, natstest.Verifier)
	a := mustAuditor(t, audit.Config{JS: ojs, Ledger: p, Name: natstest.Verifier, Keyring: other.Keyring, Witness: wv})
	if err := p.WaitApplied(ctx, last); err != nil {
		t.Fatal(err)
	}
	if p.Broken() != "" || !p.CaughtUp() {
		t.Fatalf("before any checkpoint the swapped history looks fine to the node: broken %q, caught up %v", p.Broken(), p.CaughtUp())
	}
	dissents, err := other.Conn.SubscribeSync(nats.CosignSubjectPrefix + natstest.Verifier)
	if err != nil {
		t.Fatal(err)
	}
	// The fleet's checkpoint reaches the node (the attacker cannot keep
	// it from every node: the operator here copies it into its AUDIT).
	if _, err := other.JS.Publish(ctx, nats.CheckpointSubject, cp.Note); err != nil {
		t.Fatal(err)
	}
	waitFor(t, a, "the node's divergence", func() bool { return a.Diverged() != "" })
	if !strings.Contains(p.Broken(), "ledger_divergence") || p.Ready() {
		t.Fatalf("the node still serves: broken %q", p.Broken())
	}
	if st := a.Stats(); st.Divergences != 1 {
		t.Fatalf("the node's stats: %+v", st)
	}
	if r := <-diverged; r != "ledger_divergence" || len(diverged) != 0 {
		t.Fatalf("the projector reported %s (and %d more)", r, len(diverged))
	}
	// Its dissent is on record: its own checkpoint of that size.
	m, err := dissents.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	body, _, _ := strings.Cut(string(m.Data), "\n\n")
	dissent, err := merkle.ParseBody(body + "\n")
	if err != nil || dissent.Size != cp.Size || dissent.Root == cp.Root {
		t.Fatalf("dissent %+v %v", dissent, err)
	}
	t.Run("admin nodes raise ledger_divergence on a node's dissent", func(t *testing.T) {
		if _, err := fleetEnv.JS.Publish(ctx, nats.CosignSubjectPrefix+natstest.Verifier, m.Data); err != nil {
			t.Fatal(err)
		}
		select {
		case node := <-seen:
			if node != natstest.Verifier {
				t.Fatalf("divergence heard of %s", node)
			}
		case <-ctx.Done():
			t.Fatal("no divergence heard")
		}
	})
}

// bundle exports the fleet's ledger.
func bundle(tb testing.TB, js jetstream.JetStream, trusted, witnesses string) []byte {
	tb.Helper()
	var b bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := audit.Export(ctx, js, &b, audit.ExportOptions{TrustedSigners: trusted, Witnesses: witnesses}); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// editBundle rewrites a bundle's event lines through f (nil drops one).
func editBundle(tb testing.TB, b []byte, f func(ev *audit.BundleEvent) bool) []byte {
	tb.Helper()
	var out bytes.Buffer
	var evs []audit.BundleEvent
	var cps []audit.BundleCheckpoint
	var head audit.BundleHeader
	err := audit.ReadBundle(bytes.NewReader(b), func(h audit.BundleHeader) error { head = h; return nil },
		func(e audit.BundleEvent) error { evs = append(evs, e); return nil },
		func(c audit.BundleCheckpoint) error { cps = append(cps, c); return nil })
	if err != nil {
		tb.Fatal(err)
	}
	w := audit.NewBundleWriter(&out)
	w.Header(head)
	for i := range evs {
		if f(&evs[i]) {
			w.Event(evs[i])
		}
	}
	for _, c := range cps {
		w.Checkpoint(c)
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	return out.Bytes()
}

func mustVerify(tb testing.TB, b []byte, opts audit.VerifyOptions) *audit.Report {
	tb.Helper()
	rep, err := audit.Verify(bytes.NewReader(b), opts)
	if err != nil {
		tb.Fatal(err)
	}
	return rep
}

func hasFailure(rep *audit.Report, kind string) *audit.Failure {
	for i := range rep.Failures {
		if rep.Failures[i].Kind == kind {
			return &rep.Failures[i]
		}
	}
	return nil
}

func TestVerify(t *testing.T) {
	env := natstest.MustStart(t)
	f := mustFleet(t, env, nil)
	publishEvents(t, env, 300, 3)
	f.checkpoint(t, 300)
	last := publishEvents(t, env, 300, 4)
	cp600 := f.checkpoint(t, int64(last))
	trusted := string(env.Keyring.Marshal())
	good := bundle(t, env.JS, trusted, f.witnessesText)
	own := audit.VerifyOptions{Keyring: env.Keyring, Witnesses: f.witnesses}
	cp300, err := f.admin.At(300)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("the ledger as it is verifies", func(t *testing.T) {
		rep := mustVerify(t, good, audit.VerifyOptions{Keyring: env.Keyring, Witnesses: f.witnesses, Since: cp300.Note})
		if !rep.OK || rep.Events != int64(last) || rep.Checkpoints != 2 || rep.CheckpointsVerified != 2 || rep.Cosignatures != 2 ||
			rep.Since == nil || !rep.Since.OK || rep.KeysFromBundle || rep.Root != cp600.Root.String() {
			t.Fatalf("%+v", rep)
		}
		if rep.Newest != string(cp600.Note) {
			t.Fatal("the newest checkpoint to save is not the 600 one")
		}
		// With the bundle's own keys it verifies too, and says so.
		if rep := mustVerify(t, good, audit.VerifyOptions{}); !rep.OK || !rep.KeysFromBundle {
			t.Fatalf("with the bundle's keys: %+v", rep)
		}
	})
	t.Run("attack: an edited event", func(t *testing.T) {
		b := editBundle(t, good, func(e *audit.BundleEvent) bool {
			if e.Seq == 101 {
				e.Data = bytes.Replace(e.Data, []byte(`"acme"`), []byte(`"evil"`), 1)
			}
			return true
		})
		rep := mustVerify(t, b, own)
		first := rep.FirstFailure()
		if rep.OK || first == nil || first.Kind != "checkpoint_root" || first.Seq != 1 || first.Size != 300 {
			t.Fatalf("%+v", rep.Failures)
		}
		if r := hasFailure(rep, "refused_event"); r == nil || r.Seq != 101 {
			t.Fatalf("the edited event's signature: %+v", rep.Failures)
		}
	})
	t.Run("attack: a reordered pair", func(t *testing.T) {
		// Events 400 and 401 swapped: both genuinely signed, so only
		// the Merkle roots show it.
		var e400, e401 audit.BundleEvent
		editBundle(t, good, func(e *audit.BundleEvent) bool {
			if e.Seq == 400 {
				e400 = *e
			}
			if e.Seq == 401 {
				e401 = *e
			}
			return true
		})
		b := editBundle(t, good, func(e *audit.BundleEvent) bool {
			switch e.Seq {
			case 400:
				e.Subject, e.Data = e401.Subject, e401.Data
			case 401:
				e.Subject, e.Data = e400.Subject, e400.Data
			}
			return true
		})
		rep := mustVerify(t, b, own)
		first := rep.FirstFailure()
		if rep.OK || rep.RefusedCount != 0 || first == nil || first.Kind != "checkpoint_root" || first.Seq != 301 || first.Size != 600 {
			t.Fatalf("%+v %+v", rep.Failures, rep)
		}
	})
	t.Run("attack: a checkpoint with a bad signature", func(t *testing.T) {
		// The publisher's signature line, as the JSON string holds it.
		bad := strings.Replace(string(good), "— "+natstest.Admin+" ", "— "+natstest.Admin+" AAAA", 1)
		if bad == string(good) {
			t.Fatal("found no checkpoint signature to break")
		}
		rep := mustVerify(t, []byte(bad), own)
		if rep.OK || hasFailure(rep, "checkpoint_signature") == nil {
			t.Fatalf("%+v", rep.Failures)
		}
	})
	t.Run("attack: a removed event, the stream recreated without it by the operator", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, _ := env.JS.Stream(ctx, nats.KeysStream)
		type msg struct {
			subj string
			data []byte
		}
		var msgs []msg
		for seq := uint64(1); seq <= last; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			if seq != 450 {
				msgs = append(msgs, msg{m.Subject, m.Data})
			}
		}
		if err := env.JS.DeleteStream(ctx, nats.KeysStream); err != nil {
			t.Fatal(err)
		}
		if _, err := env.JS.CreateStream(ctx, nats.KeysStreamConfig(nats.StreamConfig{})); err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if _, err := env.JS.Publish(ctx, m.subj, m.data); err != nil {
				t.Fatal(err)
			}
		}
		rep := mustVerify(t, bundle(t, env.JS, trusted, f.witnessesText), audit.VerifyOptions{Keyring: env.Keyring, Since: cp600.Note})
		first := rep.FirstFailure()
		if rep.OK || first == nil || first.Kind != "checkpoint_root" || first.Seq != 301 || hasFailure(rep, "checkpoint_size") == nil ||
			rep.Since == nil || rep.Since.OK || hasFailure(rep, "since") == nil {
			t.Fatalf("%+v %+v", rep.Failures, rep.Since)
		}
	})
	t.Run("a bundle that is not one is an error", func(t *testing.T) {
		if _, err := audit.Verify(strings.NewReader("{}\n"), own); err == nil {
			t.Fatal("accepted")
		}
		if _, err := audit.Verify(strings.NewReader(`{"keyledger_audit_bundle":"v1"}`+"\nnot json\n"), own); err == nil {
			t.Fatal("accepted")
		}
	})
}

func mustRing(tb testing.TB, vkeys ...string) *events.Keyring {
	tb.Helper()
	r, err := events.NewKeyring(vkeys...)
	if err != nil {
		tb.Fatal(err)
	}
	return r
}
