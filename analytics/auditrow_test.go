package analytics

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"
)

// publishLedger publishes data as it is on subject of KEYS and returns its
// stream sequence.
func publishLedger(tb testing.TB, js jetstream.JetStream, subject string, data []byte) uint64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, subject, data)
	if err != nil {
		tb.Fatalf("publish: %v", err)
	}
	return ack.Sequence
}

// waitKeysIdle waits until the KEYS ingest consumer has nothing left to
// deliver or acknowledge: every message published before is stored or
// dead-lettered.
func waitKeysIdle(tb testing.TB, a *Analytics) {
	tb.Helper()
	waitFor(tb, 30*time.Second, "the KEYS ingest consumer to be idle", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ci, err := a.ingesters[1].consumer().Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return ci.NumPending == 0 && ci.NumAckPending == 0, fmt.Sprintf("pending %d ack pending %d", ci.NumPending, ci.NumAckPending)
	})
}

// readAudit returns every row ReadAuditRows gives, checking their order.
func readAudit(tb testing.TB, dsn string) []AuditRow {
	tb.Helper()
	var rows []AuditRow
	err := ReadAuditRows(context.Background(), dsn, func(r AuditRow) error {
		if n := len(rows); n > 0 && r.Seq < rows[n-1].Seq {
			return fmt.Errorf("row at seq %d after seq %d", r.Seq, rows[n-1].Seq)
		}
		rows = append(rows, r)
		return nil
	})
	if err != nil {
		tb.Fatalf("ReadAuditRows: %v", err)
	}
	return rows
}

// checkAudit compares ClickHouse's rows with the ledger's as the external
// checker does: seq by seq, one finding per difference.
func checkAudit(want map[uint64]AuditRow, got []AuditRow) []string {
	findings := []string{}
	seen := map[uint64]bool{}
	for _, g := range got {
		seen[g.Seq] = true
		w, ok := want[g.Seq]
		if !ok {
			findings = append(findings, fmt.Sprintf("extra %d", g.Seq))
			continue
		}
		if f := DiffAuditRow(w, g); f != "" {
			findings = append(findings, fmt.Sprintf("%s %d", f, g.Seq))
		}
	}
	for seq := range want {
		if !seen[seq] {
			findings = append(findings, fmt.Sprintf("missing %d", seq))
		}
	}
	slices.Sort(findings)
	return findings
}

// waitMutations waits until every mutation of key_events is applied:
// 18.16 runs ALTER … UPDATE/DELETE in the background and has no setting
// to wait for them.
func waitMutations(tb testing.TB, a *Analytics) {
	tb.Helper()
	waitFor(tb, 30*time.Second, "key_events mutations to finish", func() (bool, string) {
		var n uint64
		err := a.conn.QueryRow(context.Background(), `SELECT count() FROM system.mutations
			WHERE database = ? AND table = 'key_events' AND is_done = 0`, a.db).Scan(&n)
		if err != nil {
			return false, err.Error()
		}
		return n == 0, fmt.Sprintf("%d pending", n)
	})
}

// TestAuditRowsMatchLedger ingests a real KEYS stream and checks the audit
// trail in ClickHouse against it the way `keyledger audit verify` does:
// every recorded message has its row, with its Merkle leaf hash, equal to
// AuditRowOf of the stored message; an edited, a removed and an extra row
// each show.
func TestAuditRowsMatchLedger(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	a := MustOpen(t, Config{JetStream: tj.js})
	MustStart(t, a)
	ctx := context.Background()
	signer := testSigner(t)

	// Sub-millisecond digits: stored (and so compared) to the millisecond.
	t0 := time.Date(2026, 4, 1, 8, 0, 0, 123456789, time.UTC)
	c1 := created("key_v1", "acme", keyledger.EnvLive, t0)
	exp := t0.Add(30 * 24 * time.Hour)
	c1.ExpiresAt = &exp
	c2 := created("key_v2", "globex", keyledger.EnvTest, t0.Add(time.Second))
	up := &events.KeyUpdated{Header: events.NewHeader(events.TypeKeyUpdated, "key_v1", "alice@example.com", t0.Add(time.Minute)),
		Prev: events.Prev{Prev: 1}, Changed: []string{events.FieldPermissions, events.FieldName}, Reason: "rename",
		Name: "renamed", Permissions: []string{"keys:read"}}
	up.ActorIP = "192.0.2.9"
	r1 := revoked("key_v1", "bob@example.com", "leaked", t0.Add(time.Hour))
	r1Data := signer.MustSeal(t, r1)

	type published struct {
		seq  uint64
		data []byte
		// recorded: ingestion keeps a row; refused: AuditRowOf says
		// !ok without an error; else it is undecodable.
		recorded, refused bool
	}
	var pub []published
	add := func(subject string, data []byte, recorded, refused bool) {
		pub = append(pub, published{publishLedger(t, tj.js, subject, data), data, recorded, refused})
	}
	for _, ev := range []events.Event{c1, c2, up} {
		add(nats.KeySubject(ev.Head().KeyID), signer.MustSeal(t, ev), true, false)
	}
	add(nats.KeySubject("key_v1"), r1Data, true, false)
	add(nats.KeySubject("key_v1"), r1Data, true, false) // replayed: folds into one row
	add(nats.KeySubject("key_x"), eventstest.MustEncode(t, created("key_x", "evil", keyledger.EnvLive, t0)), false, true)
	mallory := eventstest.MustSigner(t, "mallory", 9)
	add(nats.KeySubject("key_y"), mallory.MustSeal(t, created("key_y", "evil", keyledger.EnvLive, t0)), false, true)
	add(nats.KeySubject("key_v2"), signer.MustSeal(t, c1), false, true) // a genuine event on another key's subject
	add(nats.KeySubject("key_v1"), signer.MustSeal(t, used("key_v1", keyledger.EnvLive, keyledger.OutcomeValid, "1.1.1.1", t0)), false, false)
	c3 := created("key_v3", "acme", keyledger.EnvLive, t0.Add(2*time.Hour))
	add(nats.KeySubject("key_v3"), signer.MustSeal(t, c3), true, false)
	waitKeysIdle(t, a)

	// The checker's side: the stored messages, read back from the stream,
	// through a keyring of its own.
	ring := eventstest.Keyring(t, signer)
	stream, err := tj.js.Stream(ctx, nats.KeysStream)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]AuditRow{}
	hexHash := regexp.MustCompile(`^[0-9a-f]{64}$`)
	for _, p := range pub {
		m, err := stream.GetMsg(ctx, p.seq)
		if err != nil {
			t.Fatal(err)
		}
		row, ok, err := AuditRowOf(ring, m.Sequence, m.Subject, m.Data)
		switch {
		case p.recorded && (!ok || err != nil):
			t.Fatalf("seq %d: AuditRowOf = %v, %v; want a row", p.seq, ok, err)
		case p.refused && (ok || err != nil):
			t.Fatalf("seq %d: AuditRowOf = %v, %v; want refused without an error", p.seq, ok, err)
		case !p.recorded && !p.refused && (ok || err == nil):
			t.Fatalf("seq %d: AuditRowOf = %v, %v; want undecodable", p.seq, ok, err)
		}
		if !ok {
			continue
		}
		h := tlog.RecordHash(p.data)
		if row.LeafHash != hex.EncodeToString(h[:]) || !hexHash.MatchString(row.LeafHash) {
			t.Errorf("seq %d: leaf hash %q, want lowercase hex of tlog.RecordHash of the published bytes", p.seq, row.LeafHash)
		}
		if row.Seq != p.seq || !row.At.Equal(row.At.Truncate(time.Millisecond)) || row.At.Location() != time.UTC {
			t.Errorf("seq %d: row %+v", p.seq, row)
		}
		want[p.seq] = row
	}
	if w := want[pub[0].seq]; !w.At.Equal(t0.Truncate(time.Millisecond)) || w.ExpiresMS != uint64(exp.UnixMilli()) ||
		w.Name != "name of key_v1" || !slices.Equal(w.Permissions, []string{"keys:read", "keys:write"}) || w.EventID != c1.EventID {
		t.Errorf("created row = %+v", w)
	}
	if w := want[pub[2].seq]; w.Name != "renamed" || w.ActorIP != "192.0.2.9" || !slices.Equal(w.Changed, []string{"permissions", "name"}) {
		t.Errorf("updated row = %+v", w)
	}

	// The replayed revoke is one row, carrying one copy's seq: the
	// checker expects that pair folded.
	first, again := pub[3].seq, pub[4].seq
	got := readAudit(t, a.cfg.DSN)
	findings := checkAudit(want, got)
	if !slices.Equal(findings, []string{fmt.Sprintf("missing %d", first)}) && !slices.Equal(findings, []string{fmt.Sprintf("missing %d", again)}) {
		t.Fatalf("findings on the untouched audit = %v, want only one copy of the replayed event missing", findings)
	}
	for _, r := range got {
		switch r.Seq {
		case first:
			delete(want, again)
			t.Logf("the replayed event's row carries the first copy's seq %d", first)
		case again:
			delete(want, first)
			t.Logf("the replayed event's row carries the later copy's seq %d", again)
		}
	}
	if f := checkAudit(want, got); len(f) != 0 {
		t.Fatalf("findings = %v", f)
	}
	for _, r := range got {
		if r.LeafHash == "" {
			t.Errorf("row %d has no leaf hash", r.Seq)
		}
	}

	// An edit of a visible field, a removed row and an extra one.
	edited, removed := pub[2].seq, pub[1].seq
	for _, stmt := range []string{
		fmt.Sprintf(`ALTER TABLE key_events UPDATE reason = 'edited' WHERE stream_seq = %d`, edited),
		fmt.Sprintf(`ALTER TABLE key_events DELETE WHERE stream_seq = %d`, removed),
	} {
		if err := a.conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	waitMutations(t, a)
	extra := want[pub[9].seq]
	extra.Seq, extra.EventID, extra.KeyID = 1000, events.NewID(), "key_extra"
	s := &keysSink{a: a, rows: []AuditRow{extra}}
	if _, _, err := s.write(ctx); err != nil {
		t.Fatal(err)
	}
	findings = checkAudit(want, readAudit(t, a.cfg.DSN))
	wantFindings := []string{"extra 1000", fmt.Sprintf("missing %d", removed), fmt.Sprintf("reason %d", edited)}
	slices.Sort(wantFindings)
	if !slices.Equal(findings, wantFindings) {
		t.Errorf("findings after tampering = %v, want %v", findings, wantFindings)
	}

	// fn's error ends the read and comes back as is.
	stop := errors.New("stop")
	calls := 0
	err = ReadAuditRows(ctx, a.cfg.DSN, func(AuditRow) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("ReadAuditRows with a failing fn = %v after %d calls", err, calls)
	}
}

// TestReadAuditRowsNeedsUpgradedSchema: the checker has only a DSN and may
// lack write rights, so ReadAuditRows never migrates; it says why it cannot
// read instead.
func TestReadAuditRowsNeedsUpgradedSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	addr := analyticstest.Addr(t)
	dsn := newDSN(t, addr)
	none := func(AuditRow) error { return nil }
	if err := ReadAuditRows(ctx, dsn, none); err == nil {
		t.Error("ReadAuditRows on a missing database succeeded")
	}
	opts, db, err := ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if err := createDatabase(ctx, *opts, db); err != nil {
		t.Fatal(err)
	}
	if err := ReadAuditRows(ctx, dsn, none); err == nil || !strings.Contains(err.Error(), "no key_events table") {
		t.Errorf("ReadAuditRows on an empty database: %v", err)
	}
	a := MustOpen(t, Config{DSN: dsn})
	if err := ReadAuditRows(ctx, dsn, none); err != nil {
		t.Errorf("ReadAuditRows on the current schema: %v", err)
	}
	// The schema as analytics before migration 5 left it.
	if err := a.conn.Exec(ctx, `ALTER TABLE key_events DROP COLUMN leaf_hash`); err != nil {
		t.Fatal(err)
	}
	err = ReadAuditRows(ctx, dsn, none)
	if err == nil || !strings.Contains(err.Error(), "analytics has not been upgraded") {
		t.Errorf("ReadAuditRows without leaf_hash: %v", err)
	}
	var ke *keyledger.Error
	if !errors.As(err, &ke) || ke.Code != keyledger.Unavailable {
		t.Errorf("error %#v, want a keyledger.Unavailable", err)
	}
	if err := ReadAuditRows(ctx, "http://"+addr+"/x", none); err == nil {
		t.Error("ReadAuditRows with an HTTP DSN succeeded")
	}
}

// TestAuditRowOf covers the derivation without ClickHouse: what is
// refused, what is undecodable, and what a row holds.
func TestAuditRowOf(t *testing.T) {
	t.Parallel()
	signer := testSigner(t)
	ring := eventstest.Keyring(t, signer)
	at := time.Date(2026, 1, 2, 3, 4, 5, 678901234, time.FixedZone("x", 3600))
	c := created("key_r1", "acme", keyledger.EnvLive, at)
	sealed := signer.MustSeal(t, c)
	row, ok, err := AuditRowOf(ring, 7, nats.KeySubject("key_r1"), sealed)
	if !ok || err != nil {
		t.Fatalf("AuditRowOf = %v, %v", ok, err)
	}
	h := tlog.RecordHash(sealed)
	if row.Seq != 7 || row.Type != "KeyCreated" || !row.At.Equal(time.Date(2026, 1, 2, 2, 4, 5, 678e6, time.UTC)) || row.At.Location() != time.UTC ||
		row.LeafHash != hex.EncodeToString(h[:]) || row.Changed == nil || row.Environment != "live" || row.Hint != "x1y2" {
		t.Errorf("row = %+v", row)
	}
	rolled := &events.KeyRolled{Header: events.NewHeader(events.TypeKeyRolled, "key_r1", "alice@example.com", at),
		RolledTo: "key_r2", ExpiresAt: at.Add(time.Hour)}
	if row, ok, err := AuditRowOf(ring, 8, nats.KeySubject("key_r1"), signer.MustSeal(t, rolled)); !ok || err != nil ||
		row.Reason != "rolled to key_r2" || row.Permissions == nil || len(row.Permissions) != 0 {
		t.Errorf("rolled: %+v, %v, %v", row, ok, err)
	}
	// Plans and owners are ledger records too: their rows say who set
	// which limits (before, these events were dead letters).
	plan := &events.PlanSet{Header: events.NewHeader(events.TypePlanSet, keyledger.PlanID("pro"), "alice@example.com", at),
		Plan: keyledger.Plan{Name: "pro", MonthlyQuota: 1000, RateLimit: &keyledger.RateLimit{PerSecond: 2.5, Burst: 5}}}
	if row, ok, err := AuditRowOf(ring, 9, nats.KeySubject(keyledger.PlanID("pro")), signer.MustSeal(t, plan)); !ok || err != nil ||
		row.Type != "PlanSet" || row.Name != "pro" || row.Reason != "monthly_quota 1000, rate_limit 2.5/s burst 5" {
		t.Errorf("plan: %+v, %v, %v", row, ok, err)
	}
	owner := &events.OwnerSet{Header: events.NewHeader(events.TypeOwnerSet, keyledger.OwnerID("acme"), "alice@example.com", at), Owner: "acme", Plan: "pro"}
	if row, ok, err := AuditRowOf(ring, 10, nats.KeySubject(keyledger.OwnerID("acme")), signer.MustSeal(t, owner)); !ok || err != nil ||
		row.Owner != "acme" || row.Reason != "plan pro" || row.KeyID != keyledger.OwnerID("acme") {
		t.Errorf("owner: %+v, %v, %v", row, ok, err)
	}
	for _, tc := range []struct {
		name    string
		ring    *events.Keyring
		subject string
		data    []byte
		ok      bool
		err     bool
	}{
		{"unsigned", ring, nats.KeySubject("key_r1"), eventstest.MustEncode(t, c), false, false},
		{"nil keyring", nil, nats.KeySubject("key_r1"), sealed, false, false},
		{"other subject", ring, nats.KeySubject("key_r9"), sealed, false, false},
		{"tampered", ring, nats.KeySubject("key_r1"), []byte(strings.Replace(string(sealed), "acme", "acmf", 1)), false, false},
		{"garbage", ring, nats.KeySubject("key_r1"), []byte("not a note"), false, false},
		{"KeyUsed", ring, nats.KeySubject("key_r1"), signer.MustSeal(t, used("key_r1", keyledger.EnvLive, keyledger.OutcomeValid, "1.1.1.1", at)), false, true},
	} {
		row, ok, err := AuditRowOf(tc.ring, 7, tc.subject, tc.data)
		if ok != tc.ok || (err != nil) != tc.err || (!ok && DiffAuditRow(row, AuditRow{}) != "") {
			t.Errorf("%s: AuditRowOf = %+v, %v, %v", tc.name, row, ok, err)
		}
	}
}

func TestDiffAuditRow(t *testing.T) {
	t.Parallel()
	base := AuditRow{Seq: 5, EventID: "0190d0a0-0000-7000-8000-000000000001", Type: "KeyCreated", KeyID: "key_1",
		Actor: "alice@example.com", ActorIP: "192.0.2.1", At: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC),
		Reason: "r", Name: "n", Owner: "o", Environment: "live", Permissions: []string{"a", "b"}, Hint: "h",
		ExpiresMS: 9, Changed: []string{"name"}, LeafHash: strings.Repeat("ab", 32)}
	for _, tc := range []struct {
		name string
		edit func(r *AuditRow)
		want string
	}{
		{"equal", func(r *AuditRow) {}, ""},
		{"same instant elsewhere", func(r *AuditRow) { r.At = r.At.In(time.FixedZone("x", -7200)) }, ""},
		{"below the millisecond", func(r *AuditRow) { r.At = r.At.Add(999 * time.Microsecond) }, ""},
		{"permissions removed", func(r *AuditRow) { r.Permissions = nil }, "permissions"},
		{"stream_seq", func(r *AuditRow) { r.Seq++ }, "stream_seq"},
		{"event_id", func(r *AuditRow) { r.EventID = strings.ToUpper(r.EventID) }, "event_id"},
		{"type", func(r *AuditRow) { r.Type = "KeyRevoked" }, "type"},
		{"key_id", func(r *AuditRow) { r.KeyID = "key_2" }, "key_id"},
		{"actor", func(r *AuditRow) { r.Actor = "" }, "actor"},
		{"actor_ip", func(r *AuditRow) { r.ActorIP = "192.0.2.2" }, "actor_ip"},
		{"ts", func(r *AuditRow) { r.At = r.At.Add(time.Second) }, "ts"},
		{"ms", func(r *AuditRow) { r.At = r.At.Add(time.Millisecond) }, "ms"},
		{"reason", func(r *AuditRow) { r.Reason = "edited" }, "reason"},
		{"name", func(r *AuditRow) { r.Name += " " }, "name"},
		{"owner", func(r *AuditRow) { r.Owner = "O" }, "owner"},
		{"environment", func(r *AuditRow) { r.Environment = "test" }, "environment"},
		{"permissions order", func(r *AuditRow) { r.Permissions = []string{"b", "a"} }, "permissions"},
		{"permissions added", func(r *AuditRow) { r.Permissions = append(r.Permissions, "c") }, "permissions"},
		{"hint", func(r *AuditRow) { r.Hint = "" }, "hint"},
		{"expires_at_ms", func(r *AuditRow) { r.ExpiresMS = 0 }, "expires_at_ms"},
		{"changed", func(r *AuditRow) { r.Changed = []string{} }, "changed"},
		{"leaf_hash", func(r *AuditRow) { r.LeafHash = strings.Repeat("AB", 32) }, "leaf_hash"},
		{"leaf_hash of an old row", func(r *AuditRow) { r.LeafHash = "" }, "leaf_hash"},
		{"the first of several", func(r *AuditRow) { r.Owner, r.Reason, r.LeafHash = "x", "y", "z" }, "reason"},
	} {
		got := base
		got.Permissions = slices.Clone(base.Permissions)
		got.Changed = slices.Clone(base.Changed)
		tc.edit(&got)
		if d := DiffAuditRow(base, got); d != tc.want {
			t.Errorf("%s: DiffAuditRow = %q, want %q", tc.name, d, tc.want)
		}
	}
	// Empty and nil arrays are the same stored value.
	a, b := base, base
	a.Permissions, a.Changed = nil, nil
	b.Permissions, b.Changed = []string{}, []string{}
	if d := DiffAuditRow(a, b); d != "" {
		t.Errorf("nil vs empty arrays: %q", d)
	}
}
