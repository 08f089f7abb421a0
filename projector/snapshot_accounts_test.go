package projector_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
	"unsafe"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/projector"
)

// accountsLedger is a stream with every kind of plan, owner and credits
// a snapshot carries.
type accountsLedger struct {
	log     *nats.Log
	last    map[string]uint64 // last sequence on each subject, by id
	secrets map[string]string // by name of the key
	ids     map[string]string // key id by name
	seq     uint64            // last sequence of the stream
}

func (l *accountsLedger) append(t *testing.T, ev events.Event) uint64 {
	t.Helper()
	id := ev.Head().KeyID
	seq, err := l.log.Append(context.Background(), ev, l.last[id])
	if err != nil {
		t.Fatal(err)
	}
	l.last[id], l.seq = seq, seq
	return seq
}

func (l *accountsLedger) create(t *testing.T, name, owner string, credits *keyledger.Credits) uint64 {
	t.Helper()
	c, secret := created(t, events.NewKeyID())
	c.Owner, c.Credits = owner, credits
	l.secrets[name], l.ids[name] = secret, c.KeyID
	return l.append(t, c)
}

func (l *accountsLedger) setCredits(t *testing.T, name string, credits *keyledger.Credits) uint64 {
	t.Helper()
	id := l.ids[name]
	u := &events.KeyUpdated{Header: events.NewHeader(events.TypeKeyUpdated, id, "test", t0.Add(time.Hour)),
		Prev: events.Prev{Prev: l.last[id]}, Changed: []string{events.FieldCredits}, Credits: credits}
	return l.append(t, u)
}

// setPlan appends a PlanSet whose Prev is the plan's last event, or prev
// when one is given (a replay).
func (l *accountsLedger) setPlan(t *testing.T, pl keyledger.Plan, prev ...uint64) uint64 {
	t.Helper()
	id := keyledger.PlanID(pl.Name)
	ps := &events.PlanSet{Header: events.NewHeader(events.TypePlanSet, id, "ops", t0.Add(2*time.Hour)), Prev: events.Prev{Prev: l.last[id]}, Plan: pl}
	if len(prev) > 0 {
		ps.Prev.Prev = prev[0]
	}
	return l.append(t, ps)
}

func (l *accountsLedger) setOwner(t *testing.T, owner, plan, meta string, prev ...uint64) uint64 {
	t.Helper()
	id := keyledger.OwnerID(owner)
	ev := &events.OwnerSet{Header: events.NewHeader(events.TypeOwnerSet, id, "ops", t0.Add(3*time.Hour)), Prev: events.Prev{Prev: l.last[id]}, Owner: owner, Plan: plan}
	if meta != "" {
		ev.Metadata = json.RawMessage(meta)
	}
	if len(prev) > 0 {
		ev.Prev.Prev = prev[0]
	}
	return l.append(t, ev)
}

var (
	daily   = &keyledger.Credits{Remaining: 5, Refill: &keyledger.Refill{Interval: keyledger.RefillDaily, Amount: 10}}
	monthly = &keyledger.Credits{Remaining: 0, Refill: &keyledger.Refill{Interval: keyledger.RefillMonthly, Amount: 1 << 40}}
)

// creditsWant is what a key's entry and record hold of credits.
type creditsWant struct {
	credits *keyledger.Credits
	rev     uint64 // the event that set them
	at      time.Time
}

func buildAccountsLedger(t *testing.T, env *natstest.Env) (*accountsLedger, map[string]creditsWant) {
	t.Helper()
	l := &accountsLedger{log: env.MustLog(t), last: map[string]uint64{}, secrets: map[string]string{}, ids: map[string]string{}}
	want := map[string]creditsWant{}
	l.create(t, "plain", "acme", nil)
	want["plain"] = creditsWant{}
	once := &keyledger.Credits{Remaining: 100}
	want["once"] = creditsWant{once, l.create(t, "once", "acme", once), t0}
	want["daily"] = creditsWant{daily, l.create(t, "daily", "globex", daily), t0}
	l.create(t, "monthly", "initech", nil)
	want["monthly"] = creditsWant{monthly, l.setCredits(t, "monthly", monthly), t0.Add(time.Hour)}
	l.create(t, "cleared", "acme", &keyledger.Credits{Remaining: 3})
	l.setCredits(t, "cleared", nil)
	want["cleared"] = creditsWant{}

	l.setPlan(t, keyledger.Plan{Name: "free", MonthlyQuota: 1000})
	l.setPlan(t, keyledger.Plan{Name: "free", MonthlyQuota: 2000}) // a second revision
	l.setPlan(t, keyledger.Plan{Name: "pro", MonthlyQuota: 1_000_000, RateLimit: &keyledger.RateLimit{PerSecond: 50.5, Burst: 100}, OnOutage: keyledger.OutageOpen})
	l.setPlan(t, keyledger.Plan{Name: "strict", RateLimit: &keyledger.RateLimit{PerSecond: 1, Burst: 1}, OnOutage: keyledger.OutageClosed})
	l.setOwner(t, "acme", "pro", `{"tier":"gold","n":3}`)
	l.setOwner(t, "globex", "", `{"note":"no plan"}`)
	l.setOwner(t, "initech", "free", "")
	l.setOwner(t, "umbrella", "ghost", "") // a plan the ledger does not hold
	// Refused (replays of the plan's first event), but stored: the next
	// event on the subject follows this one.
	l.setPlan(t, keyledger.Plan{Name: "free", MonthlyQuota: 1}, 0)
	return l, want
}

// sameAccounts checks that b holds a's plans and owners, and that a holds
// what buildAccountsLedger wrote.
func sameAccounts(t *testing.T, a, b *projector.Projector, l *accountsLedger) {
	t.Helper()
	if !reflect.DeepEqual(a.Plans(), b.Plans()) {
		t.Fatalf("plans:\n%+v\n%+v", a.Plans(), b.Plans())
	}
	plans := b.Plans()
	if len(plans) != 3 || plans[0].Name != "free" || plans[0].MonthlyQuota != 2000 || plans[0].RateLimit != nil ||
		plans[1].Name != "pro" || !plans[1].FailsOpen() || *plans[1].RateLimit != (keyledger.RateLimit{PerSecond: 50.5, Burst: 100}) ||
		plans[2].Name != "strict" || plans[2].OnOutage != keyledger.OutageClosed ||
		plans[1].Revision != l.last[keyledger.PlanID("pro")] || !plans[1].UpdatedAt.Equal(t0.Add(2*time.Hour)) || plans[1].UpdatedBy != "ops" {
		t.Fatalf("plans: %+v", plans)
	}
	for _, name := range []string{"acme", "globex", "initech", "umbrella", "nobody"} {
		oa, oka := a.Owner(name)
		ob, okb := b.Owner(name)
		if oka != okb || !reflect.DeepEqual(oa, ob) {
			t.Fatalf("owner %s:\n%+v\n%+v", name, oa, ob)
		}
		if pa, pb := a.OwnerPlan(name), b.OwnerPlan(name); !reflect.DeepEqual(pa, pb) {
			t.Fatalf("plan of %s: %+v, %+v", name, pa, pb)
		}
	}
	if o, _ := b.Owner("acme"); string(o.Metadata) != `{"tier":"gold","n":3}` || o.Plan != "pro" || o.Revision != l.last[keyledger.OwnerID("acme")] {
		t.Fatalf("acme: %+v", o)
	}
	if o, _ := b.Owner("initech"); o.Metadata != nil || o.Plan != "free" {
		t.Fatalf("initech: %+v", o)
	}
	if pl := b.OwnerPlan("acme"); pl == nil || pl.Name != "pro" {
		t.Fatalf("plan of acme: %+v", pl)
	}
	if b.OwnerPlan("globex") != nil || b.OwnerPlan("umbrella") != nil || b.OwnerPlan("nobody") != nil {
		t.Fatal("an owner without a plan the ledger holds is metered")
	}
	if b.AccountsGen() == 0 {
		t.Fatal("accounts loaded without moving AccountsGen")
	}
}

func sameCredits(t *testing.T, a, b *projector.Projector, l *accountsLedger, want map[string]creditsWant, records bool) {
	t.Helper()
	for name, w := range want {
		ea, eb := lookup(a, l.secrets[name]), lookup(b, l.secrets[name])
		if ea == nil || eb == nil {
			t.Fatalf("%s: no entry", name)
		}
		var got creditsWant
		if x := eb.Extra; x != nil {
			got = creditsWant{x.Credits, x.CreditsRev, time.Unix(0, x.CreditsAt).UTC()}
			if x.Credits == nil && (x.CreditsRev != 0 || x.CreditsAt != 0) {
				t.Fatalf("%s: credit stamps without credits: %+v", name, x)
			}
		}
		if !reflect.DeepEqual(got.credits, w.credits) || got.rev != w.rev || w.credits != nil && !got.at.Equal(w.at) {
			t.Fatalf("%s: entry credits %+v rev %d at %v, want %+v rev %d at %v", name, got.credits, got.rev, got.at, w.credits, w.rev, w.at)
		}
		if xa := ea.Extra; xa != nil && (!reflect.DeepEqual(xa.Credits, eb.Extra.Credits) || xa.CreditsRev != eb.Extra.CreditsRev || xa.CreditsAt != eb.Extra.CreditsAt) {
			t.Fatalf("%s: credits differ from a full replay's", name)
		}
		if records {
			k, _ := b.Key(l.ids[name])
			if !reflect.DeepEqual(k.Credits, w.credits) {
				t.Fatalf("%s: record credits %+v, want %+v", name, k.Credits, w.credits)
			}
		}
	}
}

// A version-4 snapshot carries the accounts and credits: a node started
// from one has exactly what a full replay gives, and the Prev check of
// the next plan or owner event works from the subjects' last events.
func TestProjector_snapshotAccounts(t *testing.T) {
	env := natstest.MustStart(t)
	ctx := context.Background()
	l, want := buildAccountsLedger(t, env)
	full := mustFollow(t, env, projector.Options{Records: true}, l.seq)
	defer full.Close(ctx)

	for _, records := range []bool{true, false} {
		name := map[bool]string{true: "admin node", false: "verifier node"}[records]
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			p1 := mustFollow(t, env, projector.Options{Records: records, SnapshotDir: dir}, l.seq)
			if err := p1.Close(ctx); err != nil {
				t.Fatal(err)
			}
			p2 := mustFollow(t, env, projector.Options{Records: records, SnapshotDir: dir}, l.seq)
			defer p2.Close(ctx)
			if st := p2.Stats(); st.Snapshot != l.seq || st.Applied != 0 {
				t.Fatalf("the snapshot was not used: %+v", st)
			}
			sameAccounts(t, full, p2, l)
			sameCredits(t, full, p2, l, want, records)
			if records {
				sameRecords(t, p2, full)
			}
			// An owner's record shares its name with the owner's keys,
			// as after applyOwnerSet.
			o, _ := p2.Owner("acme")
			if unsafe.StringData(o.Name) != unsafe.StringData(lookup(p2, l.secrets["plain"]).Owner) {
				t.Fatal("the owner's name is not interned")
			}
		})
	}

	t.Run("the subjects' last events survive the snapshot", func(t *testing.T) {
		dir := t.TempDir()
		p1 := mustFollow(t, env, projector.Options{SnapshotDir: dir}, l.seq)
		if err := p1.Close(ctx); err != nil {
			t.Fatal(err)
		}
		p2 := mustFollow(t, env, projector.Options{SnapshotDir: dir}, l.seq)
		defer p2.Close(ctx)
		gen := p2.AccountsGen()
		// Follows the refused replay, the subject's last event: applies.
		next := l.setPlan(t, keyledger.Plan{Name: "free", MonthlyQuota: 3000})
		// A copy of acme's first event (Prev 0): refused.
		before := p2.Rejected()["replayed"]
		last := l.setOwner(t, "acme", "", "", 0)
		if err := p2.WaitApplied(ctx, last); err != nil {
			t.Fatal(err)
		}
		if pl, _ := p2.Plan("free"); pl.Revision != next || pl.MonthlyQuota != 3000 {
			t.Fatalf("the plan's next event did not apply: %+v", pl)
		}
		if p2.Rejected()["replayed"] != before+1 {
			t.Fatalf("a replayed owner event was not refused: %v", p2.Rejected())
		}
		if o, _ := p2.Owner("acme"); o.Plan != "pro" {
			t.Fatalf("a replayed owner event applied: %+v", o)
		}
		if p2.AccountsGen() <= gen {
			t.Fatal("AccountsGen did not move")
		}
	})
}

// rewriteSnapshot copies the snapshot in dir into a new directory with its
// body changed by f and its checksum made right again.
func rewriteSnapshot(t *testing.T, dir string, f func(body []byte)) string {
	t.Helper()
	snaps, _ := filepath.Glob(filepath.Join(dir, "snap-*.bin"))
	if len(snaps) != 1 {
		t.Fatalf("snapshots: %v", snaps)
	}
	b, err := os.ReadFile(snaps[0])
	if err != nil {
		t.Fatal(err)
	}
	body := b[:len(b)-sha256.Size]
	f(body)
	sum := sha256.Sum256(body)
	copy(b[len(body):], sum[:])
	out := t.TempDir()
	if err := os.WriteFile(filepath.Join(out, filepath.Base(snaps[0])), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// Snapshots of versions 2 and 3 are refused: the builds that wrote them
// skipped plan and owner events and dropped credits, so the node replays
// the stream instead (see the version history in snapshot.go). So is a
// version-4 snapshot whose accounts are damaged.
func TestProjector_snapshotOldVersionsRefused(t *testing.T) {
	env := natstest.MustStart(t)
	ctx := context.Background()
	l, want := buildAccountsLedger(t, env)
	full := mustFollow(t, env, projector.Options{Records: true}, l.seq)
	defer full.Close(ctx)
	dir := t.TempDir()
	p1 := mustFollow(t, env, projector.Options{Records: true, SnapshotDir: dir}, l.seq)
	if err := p1.Close(ctx); err != nil {
		t.Fatal(err)
	}

	replayed := func(t *testing.T, dir string) {
		t.Helper()
		p := mustFollow(t, env, projector.Options{Records: true, SnapshotDir: dir}, l.seq)
		defer p.Close(ctx)
		if st := p.Stats(); st.Snapshot != 0 || p.Broken() != "" {
			t.Fatalf("the snapshot was used (or the node stopped: %q): %+v", p.Broken(), st)
		}
		if p.Table().Digest() != full.Table().Digest() {
			t.Fatal("replay after a refused snapshot: wrong table")
		}
		sameAccounts(t, full, p, l)
		sameCredits(t, full, p, l, want, true)
		sameRecords(t, p, full)
	}
	for _, magic := range []string{"KLSNAP03", "KLSNAP02"} {
		t.Run(magic, func(t *testing.T) {
			replayed(t, rewriteSnapshot(t, dir, func(b []byte) { copy(b, magic) }))
		})
	}
	t.Run("a version-4 snapshot with damaged accounts", func(t *testing.T) {
		cdir := t.TempDir()
		snaps, _ := filepath.Glob(filepath.Join(dir, "snap-*.bin"))
		b, _ := os.ReadFile(snaps[0])
		b[len(b)-sha256.Size-3] ^= 0xFF // in the last rev
		os.WriteFile(filepath.Join(cdir, filepath.Base(snaps[0])), b, 0o600)
		replayed(t, cdir)
	})
}

// Refusing an old snapshot does not lose what its header proves: one of a
// KEYS that was since replaced still stops the node.
func TestProjector_oldSnapshotOfReplacedStream(t *testing.T) {
	env := natstest.MustStart(t)
	ctx := context.Background()
	dir := t.TempDir()
	last := appendKeys(t, env.MustLog(t), 20)
	p := mustFollow(t, env, projector.Options{SnapshotDir: dir}, last)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	old := rewriteSnapshot(t, dir, func(b []byte) { copy(b, "KLSNAP03") })
	if err := env.JS.DeleteStream(ctx, nats.KeysStream); err != nil {
		t.Fatal(err)
	}
	if err := nats.EnsureStreams(ctx, env.JS, nats.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	appendKeys(t, env.MustLog(t), 30)
	p2 := projector.New(env.JS, projector.Options{SnapshotDir: old, Keyring: env.Keyring})
	if err := p2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p2.Close(ctx)
	if p2.Broken() == "" || p2.LastSeq() != 0 {
		t.Fatalf("broken %q, last seq %d: the node follows a replaced stream", p2.Broken(), p2.LastSeq())
	}
}
