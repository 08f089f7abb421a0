package nats_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// testCtx bounds every ledger call of a test.
func testCtx(tb testing.TB) context.Context {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// MustAppend appends ev expecting expect and returns its sequence.
func MustAppend(tb testing.TB, l *nats.Log, ev events.Event, expect uint64) uint64 {
	tb.Helper()
	seq, err := l.Append(testCtx(tb), ev, expect)
	if err != nil {
		tb.Fatalf("Append(%s %s, expect %d): %v", ev.Head().Type, ev.Head().KeyID, expect, err)
	}
	if seq == 0 {
		tb.Fatalf("Append(%s %s) returned sequence 0", ev.Head().Type, ev.Head().KeyID)
	}
	return seq
}

// MustHistory returns a key's history.
func MustHistory(tb testing.TB, l *nats.Log, keyID string) []nats.Record {
	tb.Helper()
	h, err := l.History(testCtx(tb), keyID)
	if err != nil {
		tb.Fatalf("History(%s): %v", keyID, err)
	}
	return h
}

func assertHistory(tb testing.TB, got []nats.Record, seqs []uint64, evs []events.Event) {
	tb.Helper()
	if len(got) != len(evs) {
		tb.Fatalf("history has %d records, want %d", len(got), len(evs))
	}
	for i := range got {
		if got[i].Seq != seqs[i] {
			tb.Fatalf("record %d has sequence %d, want %d", i, got[i].Seq, seqs[i])
		}
		eventstest.AssertSame(tb, got[i].Event, evs[i])
	}
}

func assertConflict(tb testing.TB, err error) {
	tb.Helper()
	if !errors.Is(err, nats.ErrConflict) {
		tb.Fatalf("error %v, want nats.ErrConflict", err)
	}
	if !errors.Is(err, keyledger.ErrConflict) || keyledger.ErrorCode(err) != keyledger.Conflict {
		tb.Fatalf("ErrConflict %v is not a keyledger conflict (code %s)", err, keyledger.ErrorCode(err))
	}
}

func TestLog_AppendCreate(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(10)

	created := eventstest.Created(t, g, "key_a")
	seq := MustAppend(t, l, created, 0)

	t.Run("second create of the same key conflicts", func(t *testing.T) {
		again := eventstest.Created(t, g, "key_a")
		again.Name = "impostor"
		_, err := l.Append(testCtx(t), again, 0)
		assertConflict(t, err)
	})
	t.Run("retried create returns the original sequence", func(t *testing.T) {
		// Same event (same event_id), expect 0 again, as a retry after a
		// lost ack sends it: a standalone server answers "wrong last
		// sequence" before looking at Nats-Msg-Id.
		got, err := l.Append(testCtx(t), created, 0)
		if err != nil || got != seq {
			t.Fatalf("retry = %d, %v; want %d, nil", got, err, seq)
		}
	})
	t.Run("history holds the create once", func(t *testing.T) {
		assertHistory(t, MustHistory(t, l, "key_a"), []uint64{seq}, []events.Event{created})
	})
	t.Run("another key is independent", func(t *testing.T) {
		other := MustAppend(t, l, eventstest.Created(t, g, "key_b"), 0)
		if other <= seq {
			t.Fatalf("sequence %d after %d", other, seq)
		}
	})
	t.Run("invalid event is refused before publishing", func(t *testing.T) {
		bad := eventstest.Created(t, g, "key.c")
		if _, err := l.Append(testCtx(t), bad, 0); !errors.Is(err, keyledger.ErrInvalid) {
			t.Fatalf("Append(bad key id) = %v, want ErrInvalid", err)
		}
		st, err := env.JS.Stream(testCtx(t), nats.KeysStream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 2 {
			t.Fatalf("KEYS holds %d messages, want 2", info.State.Msgs)
		}
	})
}

func TestLog_AppendRevoke(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(11)

	created := eventstest.Created(t, g, "key_r")
	s1 := MustAppend(t, l, created, 0)
	revoked := eventstest.Revoked(t, g, "key_r", "rotated")
	s2 := MustAppend(t, l, revoked, s1)
	if s2 <= s1 {
		t.Fatalf("revoke sequence %d after create %d", s2, s1)
	}

	t.Run("stale expected sequence conflicts", func(t *testing.T) {
		_, err := l.Append(testCtx(t), eventstest.Revoked(t, g, "key_r", "late"), s1)
		assertConflict(t, err)
	})
	t.Run("expected sequence from the future conflicts", func(t *testing.T) {
		_, err := l.Append(testCtx(t), eventstest.Revoked(t, g, "key_r", "future"), s2+10)
		assertConflict(t, err)
	})
	t.Run("expect on an empty subject conflicts", func(t *testing.T) {
		_, err := l.Append(testCtx(t), eventstest.Revoked(t, g, "key_none", "x"), s1)
		assertConflict(t, err)
	})
	t.Run("create over an existing key conflicts", func(t *testing.T) {
		_, err := l.Append(testCtx(t), eventstest.Created(t, g, "key_r"), 0)
		assertConflict(t, err)
	})
	t.Run("retried revoke returns its sequence", func(t *testing.T) {
		got, err := l.Append(testCtx(t), revoked, s1)
		if err != nil || got != s2 {
			t.Fatalf("retry = %d, %v; want %d, nil", got, err, s2)
		}
	})
	t.Run("retried create after the revoke is a conflict, not a success", func(t *testing.T) {
		// The create did land, but it is no longer the last event: the
		// retry cannot tell a lost ack from a concurrent writer.
		_, err := l.Append(testCtx(t), created, 0)
		assertConflict(t, err)
	})
	t.Run("history", func(t *testing.T) {
		assertHistory(t, MustHistory(t, l, "key_r"), []uint64{s1, s2}, []events.Event{created, revoked})
	})
}

// TestLog_AppendReusedEventID: an event id is a Nats-Msg-Id, and the stream
// drops a message whose id it has seen in the dedup window. A *different*
// event that reuses a stored event's id must not be reported as appended.
func TestLog_AppendReusedEventID(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(12)

	created := eventstest.Created(t, g, "key_d")
	s1 := MustAppend(t, l, created, 0)

	revoke := eventstest.Revoked(t, g, "key_d", "compromised")
	revoke.EventID = created.EventID
	seq, err := l.Append(testCtx(t), revoke, s1)
	if err == nil {
		h := MustHistory(t, l, "key_d")
		if _, ok := h[len(h)-1].Event.(*events.KeyRevoked); !ok {
			t.Errorf("Append(revoke reusing the create's event_id) = %d, nil, but the revoke is not in the ledger (history: %d records, last %T)",
				seq, len(h), h[len(h)-1].Event)
		}
	}

	// Through the retry path: a stale expected sequence makes the server
	// answer "wrong last sequence", and Append then takes the last message
	// for this event because the ids match.
	stale := eventstest.Revoked(t, g, "key_d", "stale")
	stale.EventID = created.EventID
	seq, err = l.Append(testCtx(t), stale, 0)
	if err == nil {
		h := MustHistory(t, l, "key_d")
		if _, ok := h[len(h)-1].Event.(*events.KeyRevoked); !ok {
			t.Errorf("Append(revoke reusing the create's event_id, stale expect 0) = %d, nil, but the revoke is not in the ledger", seq)
		}
	}

	other := eventstest.Created(t, g, "key_e")
	other.EventID = created.EventID
	seq, err = l.Append(testCtx(t), other, 0)
	if err == nil {
		if _, herr := l.History(testCtx(t), "key_e"); herr != nil {
			t.Errorf("Append(create of key_e reusing key_d's event_id) = %d, nil, but key_e is not in the ledger: %v", seq, herr)
		}
	}
}

// TestLog_ConcurrentRevokes races two revokes of one key, both expecting the
// create's sequence: exactly one may win, every time.
func TestLog_ConcurrentRevokes(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(13)
	const rounds = 20

	for round := range rounds {
		id := fmt.Sprintf("key_race_%02d", round)
		s1 := MustAppend(t, l, eventstest.Created(t, g, id), 0)
		revokes := []*events.KeyRevoked{eventstest.Revoked(t, g, id, "a"), eventstest.Revoked(t, g, id, "b")}

		var (
			start = make(chan struct{})
			wg    sync.WaitGroup
			seqs  [2]uint64
			errs  [2]error
		)
		for i, ev := range revokes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				seqs[i], errs[i] = l.Append(testCtx(t), ev, s1)
			}()
		}
		close(start)
		wg.Wait()

		wins := 0
		winner := -1
		for i := range errs {
			switch {
			case errs[i] == nil:
				wins++
				winner = i
			case !errors.Is(errs[i], nats.ErrConflict):
				t.Fatalf("round %d: revoke %d failed with %v, want success or ErrConflict", round, i, errs[i])
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d revokes won (errors %v, %v), want exactly 1", round, wins, errs[0], errs[1])
		}
		last, err := l.Last(testCtx(t), id)
		if err != nil {
			t.Fatalf("round %d: Last: %v", round, err)
		}
		if last.Seq != seqs[winner] || last.Event.Head().EventID != revokes[winner].EventID {
			t.Fatalf("round %d: last is %d %s, want the winner %d %s", round, last.Seq, last.Event.Head().EventID, seqs[winner], revokes[winner].EventID)
		}
		if h := MustHistory(t, l, id); len(h) != 2 {
			t.Fatalf("round %d: history has %d records, want 2", round, len(h))
		}
	}
}

func TestLog_Last(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(14)

	for _, id := range []string{"key_unknown", "key.bad", "", "*", ">"} {
		if r, err := l.Last(testCtx(t), id); !errors.Is(err, keyledger.ErrNotFound) || r.Event != nil {
			t.Errorf("Last(%q) = %+v, %v; want ErrNotFound", id, r, err)
		}
	}

	created := eventstest.Created(t, g, "key_l")
	s1 := MustAppend(t, l, created, 0)
	r, err := l.Last(testCtx(t), "key_l")
	if err != nil || r.Seq != s1 {
		t.Fatalf("Last = %+v, %v", r, err)
	}
	eventstest.AssertSame(t, r.Event, created)

	revoked := eventstest.Revoked(t, g, "key_l", "done")
	s2 := MustAppend(t, l, revoked, s1)
	r, err = l.Last(testCtx(t), "key_l")
	if err != nil || r.Seq != s2 {
		t.Fatalf("Last = %+v, %v", r, err)
	}
	eventstest.AssertSame(t, r.Event, revoked)
}

func TestLog_History(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(15)

	for _, id := range []string{"key_unknown", "key.bad", ""} {
		if h, err := l.History(testCtx(t), id); !errors.Is(err, keyledger.ErrNotFound) || h != nil {
			t.Errorf("History(%q) = %v, %v; want ErrNotFound", id, h, err)
		}
	}

	// Interleave two keys (and a prefix-sharing third) so that History has
	// to skip other subjects.
	a1, b1 := eventstest.Created(t, g, "key_h"), eventstest.Created(t, g, "key_h2")
	sa1 := MustAppend(t, l, a1, 0)
	sb1 := MustAppend(t, l, b1, 0)
	c1 := eventstest.Created(t, g, "key_x")
	MustAppend(t, l, c1, 0)
	a2 := eventstest.Revoked(t, g, "key_h", "x")
	sa2 := MustAppend(t, l, a2, sa1)
	b2 := eventstest.Revoked(t, g, "key_h2", "y")
	sb2 := MustAppend(t, l, b2, sb1)

	assertHistory(t, MustHistory(t, l, "key_h"), []uint64{sa1, sa2}, []events.Event{a1, a2})
	assertHistory(t, MustHistory(t, l, "key_h2"), []uint64{sb1, sb2}, []events.Event{b1, b2})
}

func TestKeysStream_DeniesDeleteAndPurge(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(16)
	created := eventstest.Created(t, g, "key_del")
	s1 := MustAppend(t, l, created, 0)

	ctx := testCtx(t)
	st, err := env.JS.Stream(ctx, nats.KeysStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Config.DenyDelete || !info.Config.DenyPurge || info.Config.Duplicates < 2*time.Minute {
		t.Fatalf("server-side KEYS config: DenyDelete %v DenyPurge %v Duplicates %v", info.Config.DenyDelete, info.Config.DenyPurge, info.Config.Duplicates)
	}
	if err := st.DeleteMsg(ctx, s1); err == nil {
		t.Errorf("DeleteMsg succeeded on the ledger")
	}
	if err := st.SecureDeleteMsg(ctx, s1); err == nil {
		t.Errorf("SecureDeleteMsg succeeded on the ledger")
	}
	if err := st.Purge(ctx); err == nil {
		t.Errorf("Purge succeeded on the ledger")
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(nats.KeySubject("key_del"))); err == nil {
		t.Errorf("Purge of one key's subject succeeded on the ledger")
	}
	assertHistory(t, MustHistory(t, l, "key_del"), []uint64{s1}, []events.Event{created})

	// EnsureStreams is idempotent and keeps the protection.
	if err := nats.EnsureStreams(ctx, env.JS, nats.StreamConfig{}); err != nil {
		t.Fatalf("EnsureStreams again: %v", err)
	}
	if err := st.DeleteMsg(ctx, s1); err == nil {
		t.Errorf("DeleteMsg succeeded after EnsureStreams")
	}
}

func TestLog_Durable(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(17)

	created := eventstest.Created(t, g, "key_dur")
	exp := eventstest.FixedAt.Add(30 * 24 * time.Hour)
	created.ExpiresAt = &exp
	created.RateLimit = &keyledger.RateLimit{PerSecond: 5, Burst: 10}
	s1 := MustAppend(t, l, created, 0)
	revoked := eventstest.Revoked(t, g, "key_dur", "end of project")
	s2 := MustAppend(t, l, revoked, s1)

	env.Stop()
	env2 := natstest.MustStartIn(t, env.Dir, "")
	l2 := env2.MustLog(t)

	assertHistory(t, MustHistory(t, l2, "key_dur"), []uint64{s1, s2}, []events.Event{created, revoked})
	last, err := l2.Last(testCtx(t), "key_dur")
	if err != nil || last.Seq != s2 {
		t.Fatalf("Last after restart = %+v, %v", last, err)
	}
	// Concurrency control continues where it was.
	_, err = l2.Append(testCtx(t), eventstest.Created(t, g, "key_dur"), 0)
	assertConflict(t, err)
	s3 := MustAppend(t, l2, eventstest.Created(t, g, "key_new"), 0)
	if s3 <= s2 {
		t.Fatalf("sequence %d after restart, want > %d", s3, s2)
	}
}

func TestLog_AppendUnavailable(t *testing.T) {
	env := natstest.MustStart(t)
	l := env.MustLog(t)
	g := eventstest.NewIDs(18)

	t.Run("cancelled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := l.Append(ctx, eventstest.Created(t, g, "key_ctx"), 0)
		if !errors.Is(err, keyledger.ErrUnavailable) {
			t.Fatalf("Append(cancelled) = %v, want ErrUnavailable", err)
		}
	})
	t.Run("server gone", func(t *testing.T) {
		env.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		begin := time.Now()
		_, err := l.Append(ctx, eventstest.Created(t, g, "key_gone"), 0)
		if !errors.Is(err, keyledger.ErrUnavailable) {
			t.Fatalf("Append(server stopped) = %v, want ErrUnavailable", err)
		}
		if d := time.Since(begin); d > 3*time.Second {
			t.Fatalf("Append took %v with a 2s context", d)
		}
		if _, err := l.Last(ctx, "key_ctx"); err == nil || errors.Is(err, keyledger.ErrNotFound) {
			t.Fatalf("Last(server stopped) = %v; an outage must not read as 'no such key'", err)
		}
	})
}

// TestLog_ridesThroughAnOutage: an append made while the stream cannot
// answer (its server down, as during a leader election) is retried, with
// the same event id, until the stream is back, and lands exactly once.
// Before, it gave up after ~1.5 s with "the ledger did not accept the
// event".
func TestLog_ridesThroughAnOutage(t *testing.T) {
	dir := t.TempDir()
	e1 := natstest.MustStartIn(t, dir, "127.0.0.1:0")
	url := e1.Server.ClientURL()
	id := e1.Identity(t, natstest.Admin)
	nc, err := natsgo.Connect(url, append(id.Options(), natsgo.MaxReconnects(-1), natsgo.ReconnectWait(20*time.Millisecond))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log, err := nats.OpenLog(ctx, js, e1.Signer.Signer, e1.Keyring)
	if err != nil {
		t.Fatal(err)
	}
	log.WriteTimeout = 45 * time.Second
	e1.Stop()

	ids := eventstest.NewIDs(9)
	ev := eventstest.Created(t, ids, "key_outage")
	type result struct {
		seq uint64
		err error
	}
	done := make(chan result, 1)
	go func() {
		seq, err := log.Append(ctx, ev, 0)
		done <- result{seq, err}
	}()
	// The append is retrying: only then does the stream come back.
	for log.Retried() == 0 {
		select {
		case r := <-done:
			t.Fatalf("append returned while the stream was down: %d %v", r.seq, r.err)
		case <-ctx.Done():
			t.Fatal("the append never retried")
		case <-time.After(10 * time.Millisecond): // polling a counter
		}
	}
	e2 := natstest.MustStartIn(t, dir, strings.TrimPrefix(url, "nats://"))
	r := <-done
	if r.err != nil || r.seq == 0 {
		t.Fatalf("append after the outage: %d %v", r.seq, r.err)
	}
	s, err := e2.JS.Stream(ctx, nats.KeysStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("KEYS holds %d messages, want the event exactly once", info.State.Msgs)
	}
}
