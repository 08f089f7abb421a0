package projector

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
)

// pageBase is the creation time of the first key of the paging tests;
// key i of a test is created i seconds after it unless it says otherwise.
var pageBase = eventstest.FixedAt

// createAt applies a signed KeyCreated of id at the given time, after f
// sets its fields.
func (c *changer) createAt(id string, at time.Time, f func(*events.KeyCreated)) {
	e := eventstest.Created(c.t, c.ids, id)
	e.At = at
	if f != nil {
		f(e)
	}
	c.apply(e)
}

// allPages reads every page of q, checking each on the way: at most
// Limit keys, a cursor exactly when more follow.
func allPages(tb testing.TB, p *Projector, q PageQuery) (ids []string, pages []Page) {
	tb.Helper()
	limit := q.Limit
	if limit == 0 {
		limit = DefaultPageLimit
	}
	for i := 0; ; i++ {
		pg, err := p.Page(q)
		if err != nil {
			tb.Fatalf("page %d of %+v: %v", i, q, err)
		}
		if len(pg.Keys) > limit || (pg.NextCursor != "" && len(pg.Keys) != limit) {
			tb.Fatalf("page %d of %+v: %d keys, next cursor %q", i, q, len(pg.Keys), pg.NextCursor)
		}
		pages = append(pages, pg)
		for _, k := range pg.Keys {
			ids = append(ids, k.ID)
		}
		if pg.NextCursor == "" {
			return ids, pages
		}
		if i > 100_000 {
			tb.Fatal("pages never end")
		}
		q.Cursor = pg.NextCursor
	}
}

// checkIndex fails unless the projector's indexes hold exactly its
// current records, in order, each chunk within bounds.
func checkIndex(tb testing.TB, p *Projector) {
	tb.Helper()
	p.recMu.RLock()
	defer p.recMu.RUnlock()
	check := func(name string, x *keyIndex, want []indexEntry) {
		tb.Helper()
		var got []indexEntry
		for i, ch := range x.chunks {
			if len(ch) == 0 || len(ch) > indexChunk {
				tb.Fatalf("%s: chunk %d has %d entries", name, i, len(ch))
			}
			got = append(got, ch...)
		}
		slices.SortFunc(want, compareEntries)
		if x.n != len(want) || !slices.Equal(got, want) {
			tb.Fatalf("%s: index of %d (n %d) is not the %d records in order", name, len(got), x.n, len(want))
		}
	}
	var all []indexEntry
	owners := map[string][]indexEntry{}
	for _, k := range p.records {
		e := indexEntry{at: k.CreatedAt.UnixNano(), k: k}
		all = append(all, e)
		owners[k.Owner] = append(owners[k.Owner], e)
	}
	check("all", p.byTime, all)
	if len(p.byOwner) != len(owners) {
		tb.Fatalf("%d owner indexes for %d owners", len(p.byOwner), len(owners))
	}
	for o, want := range owners {
		check("owner "+o, p.byOwner[o], want)
	}
}

func TestPage_filters(t *testing.T) {
	c := newChanger(t, Options{Records: true})
	now := pageBase.Add(time.Hour)
	past := pageBase.Add(30 * time.Minute)
	// Twelve keys, k00 the oldest. Unless listed: acme, live, name
	// "ci deploy", hint "mKUD", active.
	type spec struct {
		owner, name, hint string
		env               keyledger.Environment
		expired           bool
	}
	specs := []spec{
		0:  {},
		1:  {owner: "globex"},
		2:  {env: keyledger.EnvTest},
		3:  {name: "prod web"},
		4:  {hint: "zZ9q"},
		5:  {expired: true},
		6:  {}, // revoked below
		7:  {}, // disabled below
		8:  {owner: "globex", env: keyledger.EnvTest, name: "ci nightly"},
		9:  {name: "CI upper"},
		10: {owner: "globex", hint: "zZ9q"},
		11: {owner: "globex"}, // revoked below
	}
	for i, s := range specs {
		c.createAt(fmt.Sprintf("k%02d", i), pageBase.Add(time.Duration(i)*time.Second), func(e *events.KeyCreated) {
			if s.owner != "" {
				e.Owner = s.owner
			}
			if s.name != "" {
				e.Name = s.name
			}
			if s.hint != "" {
				e.Hint = s.hint
			}
			if s.env != keyledger.EnvUnknown {
				e.Environment = s.env
			}
			if s.expired {
				e.ExpiresAt = &past
			}
		})
	}
	c.apply(eventstest.Revoked(t, c.ids, "k06", "leak"))
	c.disable("k07")
	c.apply(eventstest.Revoked(t, c.ids, "k11", "leak"))
	// A key both disabled and revoked is revoked.
	c.disable("k03")
	c.apply(eventstest.Revoked(t, c.ids, "k03", "gone"))
	checkIndex(t, c.p)

	ids := func(ns ...int) []string {
		out := []string{}
		for _, n := range ns {
			out = append(out, fmt.Sprintf("k%02d", n))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		q    PageQuery
		want []string
	}{
		{"all", PageQuery{}, ids(11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)},
		{"owner", PageQuery{Owner: "globex"}, ids(11, 10, 8, 1)},
		{"unknown owner", PageQuery{Owner: "initech"}, ids()},
		{"owner is exact", PageQuery{Owner: "acm"}, ids()},
		{"environment", PageQuery{Environment: keyledger.EnvTest}, ids(8, 2)},
		{"live", PageQuery{Environment: keyledger.EnvLive}, ids(11, 10, 9, 7, 6, 5, 4, 3, 1, 0)},
		{"active", PageQuery{Status: keyledger.StatusActive}, ids(10, 9, 8, 4, 2, 1, 0)},
		{"revoked", PageQuery{Status: keyledger.StatusRevoked}, ids(11, 6, 3)},
		{"expired", PageQuery{Status: keyledger.StatusExpired}, ids(5)},
		{"not yet expired", PageQuery{Status: keyledger.StatusActive, Now: past.Add(-time.Second), Owner: "acme", Environment: keyledger.EnvLive, NamePrefix: "ci", Hint: "mKUD"}, ids(5, 0)},
		{"disabled", PageQuery{Status: keyledger.StatusDisabled}, ids(7)},
		{"name prefix", PageQuery{NamePrefix: "ci "}, ids(11, 10, 8, 7, 6, 5, 4, 2, 1, 0)},
		{"name prefix is case-sensitive", PageQuery{NamePrefix: "CI"}, ids(9)},
		{"whole name", PageQuery{NamePrefix: "prod web"}, ids(3)},
		{"hint", PageQuery{Hint: "zZ9q"}, ids(10, 4)},
		{"hint is exact", PageQuery{Hint: "zZ9"}, ids()},
		{"owner and hint", PageQuery{Owner: "globex", Hint: "zZ9q"}, ids(10)},
		{"owner, environment and prefix", PageQuery{Owner: "globex", Environment: keyledger.EnvTest, NamePrefix: "ci n"}, ids(8)},
		{"owner and status", PageQuery{Owner: "globex", Status: keyledger.StatusRevoked}, ids(11)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.q.Now.IsZero() {
				tc.q.Now = now
			}
			for _, limit := range []int{0, 1, 2, 3, 1000} {
				q := tc.q
				q.Limit = limit
				got, pages := allPages(t, c.p, q)
				if !slices.Equal(got, tc.want) {
					t.Fatalf("limit %d: got %v, want %v", limit, got, tc.want)
				}
				if limit == 1 && len(pages) != max(len(tc.want), 1) {
					t.Fatalf("limit 1: %d pages for %d keys", len(pages), len(tc.want))
				}
			}
			// Keys, on the same index, agrees where it can filter.
			if tc.q.NamePrefix == "" && tc.q.Hint == "" {
				var want []string
				for _, k := range c.p.Keys(Filter{Owner: tc.q.Owner, Environment: tc.q.Environment, Status: tc.q.Status}, tc.q.Now) {
					want = append(want, k.ID)
				}
				if !slices.Equal(want, tc.want) && (len(want) != 0 || len(tc.want) != 0) {
					t.Fatalf("Keys: %v, Page: %v", want, tc.want)
				}
			}
		})
	}

	t.Run("pages hold copies of the records", func(t *testing.T) {
		pg, err := c.p.Page(PageQuery{Limit: 1, Owner: "globex", Hint: "zZ9q"})
		if err != nil {
			t.Fatal(err)
		}
		k, _ := c.p.Key("k10")
		if len(pg.Keys) != 1 || !reflect.DeepEqual(pg.Keys[0], k) {
			t.Fatalf("page %+v, record %+v", pg.Keys, k)
		}
		pg.Keys[0].Name = "changed"
		if k, _ := c.p.Key("k10"); k.Name == "changed" {
			t.Fatal("a page shares the stored record")
		}
	})

	t.Run("a status is computed at the projector's clock without Now", func(t *testing.T) {
		p := New(nil, Options{Records: true, Now: func() time.Time { return now }})
		p.records, p.byTime, p.byOwner = c.p.records, c.p.byTime, c.p.byOwner
		if got, _ := allPages(t, p, PageQuery{Status: keyledger.StatusExpired}); !slices.Equal(got, ids(5)) {
			t.Fatalf("expired at the projector's clock: %v", got)
		}
	})

	t.Run("a cursor is a place, valid with any filter", func(t *testing.T) {
		pg, err := c.p.Page(PageQuery{Limit: 2, Owner: "globex"}) // k11, k10
		if err != nil {
			t.Fatal(err)
		}
		got, _ := allPages(t, c.p, PageQuery{Cursor: pg.NextCursor, Environment: keyledger.EnvTest})
		if !slices.Equal(got, ids(8, 2)) {
			t.Fatalf("after k10, test keys: %v", got)
		}
	})

	t.Run("errors", func(t *testing.T) {
		first, err := c.p.Page(PageQuery{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			q    PageQuery
			want string
		}{
			{"negative limit", PageQuery{Limit: -1}, "limit must be between 1 and 1000"},
			{"limit too large", PageQuery{Limit: 1001}, "limit must be between 1 and 1000"},
			{"not base64", PageQuery{Cursor: "not a cursor!"}, "cursor is not one this API returned"},
			{"padded base64", PageQuery{Cursor: first.NextCursor + "="}, "cursor is not one this API returned"},
			{"too short", PageQuery{Cursor: "AQ"}, "cursor is not one this API returned"},
			{"no id", PageQuery{Cursor: first.NextCursor[:12]}, "cursor is not one this API returned"},
			{"another version", PageQuery{Cursor: "Ag" + first.NextCursor[2:]}, "cursor is not one this API returned"},
			{"id too long", PageQuery{Cursor: encodeCursor(place{at: 1, id: strings.Repeat("k", maxCursorID+1)})}, "cursor is not one this API returned"},
			{"unknown status", PageQuery{Status: "paused"}, "status must be"},
			{"unknown environment", PageQuery{Environment: 9}, "environment must be"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := c.p.Page(tc.q)
				if keyledger.ErrorCode(err) != keyledger.Invalid || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an invalid_request error saying %q", err, tc.want)
				}
			})
		}
		// The first page's cursor, for what the cases above cut from it.
		if got, _ := allPages(t, c.p, PageQuery{Cursor: first.NextCursor, Limit: 100}); len(got) != 11 {
			t.Fatalf("after the first key: %d keys", len(got))
		}
		if pg, err := c.p.Page(PageQuery{Limit: 1000}); err != nil || len(pg.Keys) != 12 || pg.NextCursor != "" {
			t.Fatalf("limit 1000: %d keys, cursor %q, %v", len(pg.Keys), pg.NextCursor, err)
		}
	})

	t.Run("without records every page is empty", func(t *testing.T) {
		p := New(nil, Options{})
		pg, err := p.Page(PageQuery{})
		if err != nil || pg.Keys == nil || len(pg.Keys) != 0 || pg.NextCursor != "" {
			t.Fatalf("%+v %v", pg, err)
		}
	})
}

// Paging while keys are created visits every key that existed when the
// first page was read exactly once, newest first, never one twice.
func TestPage_whileCreating(t *testing.T) {
	c := newChanger(t, Options{Records: true})
	n := 0
	create := func(k int) {
		for range k {
			// Mostly in order; every seventh key is created out of order,
			// behind the keys of the last minute.
			at := pageBase.Add(time.Duration(n) * time.Second)
			if n%7 == 3 {
				at = at.Add(-time.Minute)
			}
			owner := "acme"
			if n%3 == 0 {
				owner = "globex"
			}
			c.createAt(fmt.Sprintf("key_%05d", n), at, func(e *events.KeyCreated) { e.Owner = owner })
			n++
		}
	}
	create(300)
	for _, q := range []PageQuery{{Limit: 17}, {Limit: 10, Owner: "globex"}, {Limit: 25, NamePrefix: "ci"}} {
		existing := map[string]bool{}
		for _, k := range c.p.Keys(Filter{Owner: q.Owner}, time.Now()) {
			existing[k.ID] = true
		}
		seen := map[string]bool{}
		var last *keyledger.Key
		for page := 0; ; page++ {
			pg, err := c.p.Page(q)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range pg.Keys {
				if seen[k.ID] {
					t.Fatalf("%+v: %s visited twice", q, k.ID)
				}
				if last != nil && comparePlaces(recordPlace(&k), recordPlace(last)) >= 0 {
					t.Fatalf("%+v: %s after %s", q, k.ID, last.ID)
				}
				seen[k.ID] = true
				last = &k
			}
			if pg.NextCursor == "" {
				break
			}
			q.Cursor = pg.NextCursor
			create(13)
		}
		for id := range existing {
			if !seen[id] {
				t.Fatalf("%+v: %s existed at the first page and was not visited", q, id)
			}
		}
	}
	checkIndex(t, c.p)
}

// A reader pages while the apply goroutine creates keys (run it with
// -race): every page sequence visits the keys that existed before it,
// once each.
func TestPage_concurrentReader(t *testing.T) {
	c := newChanger(t, Options{Records: true})
	const n = 1500
	// Sign on the test's goroutine; the writer only applies.
	msgs := make([][]byte, n)
	for i := range msgs {
		e := eventstest.Created(t, c.ids, fmt.Sprintf("key_%05d", i))
		e.At = pageBase.Add(time.Duration(i) * time.Millisecond)
		if i%11 == 5 {
			e.At = e.At.Add(-50 * time.Millisecond)
		}
		if i%2 == 0 {
			e.Owner = "globex"
		}
		msgs[i] = c.signer.MustSeal(t, e)
	}
	for i := range 300 {
		c.put(fmt.Sprintf("key_%05d", i), msgs[i])
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 300; i < n; i++ {
			c.put(fmt.Sprintf("key_%05d", i), msgs[i])
			if i%50 == 0 {
				runtime.Gosched()
			}
		}
	}()
	var failure error
	rounds := 0
	for alive := true; alive && failure == nil; rounds++ {
		select {
		case <-done:
			alive = false
		default:
		}
		q := PageQuery{Limit: 1 + rounds%40}
		if rounds%3 == 1 {
			q.Owner = "globex"
		}
		existing := c.p.Keys(Filter{Owner: q.Owner}, time.Now())
		seen := map[string]int{}
		for failure == nil {
			pg, err := c.p.Page(q)
			if err != nil {
				failure = err
				break
			}
			for _, k := range pg.Keys {
				if seen[k.ID]++; seen[k.ID] > 1 {
					failure = fmt.Errorf("%+v: %s visited twice", q, k.ID)
				}
			}
			if pg.NextCursor == "" {
				break
			}
			q.Cursor = pg.NextCursor
		}
		for _, k := range existing {
			if failure == nil && seen[k.ID] != 1 {
				failure = fmt.Errorf("%+v: %s existed before the first page and was visited %d times", q, k.ID, seen[k.ID])
			}
		}
	}
	<-done
	if failure != nil {
		t.Fatal(failure)
	}
	t.Logf("%d page sequences while creating", rounds)
	if pg, _ := c.p.Page(PageQuery{Limit: 1000}); len(pg.Keys) != 1000 || pg.NextCursor == "" {
		t.Fatalf("%d keys, cursor %q", len(pg.Keys), pg.NextCursor)
	}
	checkIndex(t, c.p)
}

func TestPage_outOfOrder(t *testing.T) {
	c := newChanger(t, Options{Records: true})
	at := func(s int) time.Time { return pageBase.Add(time.Duration(s) * time.Second) }
	c.createAt("key_b", at(10), nil)
	c.createAt("key_d", at(30), nil)
	c.createAt("key_f", at(50), nil)
	c.createAt("key_c", at(20), nil)        // between b and d
	c.createAt("key_a", at(0), nil)         // the oldest of all
	c.createAt("key_e", at(30), nil)        // d's time: ordered by id, after d
	c.createAt("key_0", at(30), nil)        // d's time: before d
	c.createAt("key_g", at(50).Add(1), nil) // a nanosecond after f: the newest
	want := []string{"key_g", "key_f", "key_e", "key_d", "key_0", "key_c", "key_b", "key_a"}
	got, _ := allPages(t, c.p, PageQuery{Limit: 3})
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	var keys []string
	for _, k := range c.p.Keys(Filter{}, time.Now()) {
		keys = append(keys, k.ID)
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("Keys: %v", keys)
	}
	checkIndex(t, c.p)
}

// entryAt is an index entry of a key id created at nanosecond at.
func entryAt(at int64, id string) indexEntry {
	return indexEntry{at: at, k: &keyledger.Key{ID: id, CreatedAt: time.Unix(0, at)}}
}

// The index itself, through chunk splits: random insertions, mostly in
// order, against a sorted list; before against a linear search.
func TestKeyIndex(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, inOrder := range []float64{0, 0.9, 1} {
		t.Run(fmt.Sprint(inOrder), func(t *testing.T) {
			x := &keyIndex{}
			var want []indexEntry
			var clock int64
			for i := range 5000 {
				clock += 10
				at := clock
				if r.Float64() >= inOrder {
					at = r.Int64N(clock + 1)
				}
				if i%13 == 0 && len(want) > 0 && inOrder < 1 {
					at = want[r.IntN(len(want))].at // a tie, ordered by id
				}
				e := entryAt(at, fmt.Sprintf("k%05d", i))
				x.insert(e)
				want = append(want, e)
			}
			slices.SortFunc(want, compareEntries)
			var got []indexEntry
			for p := x.last(); p.c >= 0; p = x.prev(p) {
				got = append(got, x.at(p))
			}
			slices.Reverse(got)
			if !slices.Equal(got, want) || x.n != len(want) {
				t.Fatal("the index is not in order")
			}
			for _, ch := range x.chunks {
				if len(ch) == 0 || len(ch) > indexChunk {
					t.Fatalf("chunk of %d", len(ch))
				}
			}
			if inOrder == 1 && len(x.chunks) != (len(want)+indexChunk-1)/indexChunk {
				t.Fatalf("appending made %d chunks", len(x.chunks))
			}
			for range 2000 {
				probe := want[r.IntN(len(want))].place()
				if r.IntN(2) == 0 {
					probe = place{at: r.Int64N(clock + 20), id: fmt.Sprintf("k%05d", r.IntN(6000))}
				}
				i, _ := slices.BinarySearchFunc(want, probe, indexEntry.compare)
				p := x.before(probe)
				if i == 0 {
					if p.c >= 0 {
						t.Fatalf("before %v: %v, want none", probe, x.at(p))
					}
					continue
				}
				if p.c < 0 || x.at(p) != want[i-1] {
					t.Fatalf("before %v: %+v, want %v", probe, p, want[i-1])
				}
			}
			// A built index (full chunks sharing one array) takes
			// appends and insertions too, without one chunk's growth
			// writing over the next.
			b := buildIndex(slices.Clone(want))
			added := []indexEntry{entryAt(clock+100, "new"), entryAt(want[len(want)/2].at, "k~"), entryAt(want[indexChunk-1].at, "k~~"), entryAt(-1, "k")}
			for _, e := range added {
				b.insert(e)
			}
			all := slices.SortedFunc(slices.Values(append(slices.Clone(want), added...)), compareEntries)
			got = got[:0]
			for _, ch := range b.chunks {
				got = append(got, ch...)
			}
			if b.n != len(all) || !slices.Equal(got, all) {
				t.Fatalf("built index: %d entries, not in order", b.n)
			}
			// replace finds every key, and only those.
			for _, e := range all {
				c := *e.k
				if !b.replace(&c) || b.at(b.before(place{at: e.at, id: e.k.ID + "\x00"})).k != &c {
					t.Fatalf("replace of %v", e.place())
				}
			}
			if b.replace(&keyledger.Key{ID: "k00000x", CreatedAt: time.Unix(0, all[0].at)}) || b.replace(&keyledger.Key{ID: "z", CreatedAt: time.Unix(0, clock+1000)}) {
				t.Fatal("replace of a key not in the index")
			}
		})
	}
}

// After a snapshot round trip the index gives the same pages, and keeps
// taking keys.
func TestPage_snapshot(t *testing.T) {
	c := newChanger(t, Options{Records: true})
	for i := range 1500 {
		at := pageBase.Add(time.Duration(i) * time.Second)
		if i%10 == 9 {
			at = pageBase.Add(time.Duration(i/2) * time.Second)
		}
		c.createAt(fmt.Sprintf("key_%05d", i), at, func(e *events.KeyCreated) {
			e.Owner = []string{"acme", "globex", "initech"}[i%3]
			e.Environment = []keyledger.Environment{keyledger.EnvLive, keyledger.EnvTest}[i%2]
			e.Name = fmt.Sprintf("svc-%d", i%7)
		})
		switch i % 17 {
		case 4:
			c.apply(eventstest.Revoked(t, c.ids, fmt.Sprintf("key_%05d", i), "r"))
		case 8:
			c.disable(fmt.Sprintf("key_%05d", i))
		}
	}
	c.p.streamID = 42
	p2 := roundTrip(t, c.p)
	checkIndex(t, p2)
	now := pageBase.Add(time.Hour)
	queries := []PageQuery{
		{}, {Limit: 1}, {Limit: 7}, {Limit: 1000},
		{Owner: "globex", Limit: 9}, {Owner: "nobody"},
		{Environment: keyledger.EnvTest, Limit: 33},
		{Status: keyledger.StatusRevoked, Limit: 5}, {Status: keyledger.StatusDisabled, Owner: "acme"},
		{NamePrefix: "svc-3", Limit: 20}, {Hint: "mKUD", Owner: "initech", Limit: 50},
	}
	same := func(a, b *Projector) {
		t.Helper()
		for _, q := range queries {
			q.Now = now
			_, pa := allPages(t, a, q)
			_, pb := allPages(t, b, q)
			if !reflect.DeepEqual(pa, pb) {
				t.Fatalf("%+v: pages differ after the snapshot", q)
			}
		}
	}
	same(c.p, p2)
	if !reflect.DeepEqual(c.p.Keys(Filter{}, now), p2.Keys(Filter{}, now)) {
		t.Fatal("Keys differs after the snapshot")
	}

	// Both take the same new keys, in order and out of it.
	c2 := &changer{t: t, p: p2, signer: c.signer, ids: eventstest.NewIDs(4), seq: c.seq, last: map[string]uint64{}}
	skipTo(p2, c.seq)
	for i, at := range []time.Time{pageBase.Add(time.Hour), pageBase.Add(100 * time.Second), pageBase.Add(-time.Hour)} {
		e := eventstest.Created(t, c.ids, fmt.Sprintf("key_new%d", i))
		e.At, e.Owner = at, "globex"
		c.apply(e)
		c2.apply(e)
	}
	checkIndex(t, p2)
	same(c.p, p2)
}

// BenchmarkProjector_Page pages a table of a million keys. The keys are
// applied as decoded events (Apply, the path after the signature check):
// applying a million signed events would spend a minute on signatures
// alone, which are not what is measured. Each of 100 owners holds 1 % of
// the keys; one key in 100 is a test key, and one in 10,000 has hint
// "rare".
//
//	go test ./projector/ -run '^$' -bench BenchmarkProjector_Page
func BenchmarkProjector_Page(b *testing.B) {
	const n = 1_000_000
	p := New(nil, Options{Records: true})
	p.table.reserve(n)
	for i := range n {
		h := hashOf(i)
		env, hint := keyledger.EnvLive, "mKUD"
		if i%100 == 50 {
			env = keyledger.EnvTest
		}
		if i%10_000 == 77 {
			hint = "rare"
		}
		at := pageBase.Add(time.Duration(i) * time.Millisecond)
		if i%1000 == 999 {
			at = at.Add(-time.Second) // a few out of order
		}
		p.Apply(uint64(i+1), &events.KeyCreated{
			Header:      events.Header{Type: events.TypeKeyCreated, V: 1, At: at, Actor: "admin", KeyID: fmt.Sprintf("key_%032x", i)},
			Name:        fmt.Sprintf("svc-%d", i%50),
			Environment: env, Permissions: []string{"workflows:read"}, Owner: fmt.Sprintf("owner-%02d", i%100),
			Hash: h.String(), Hint: hint,
		})
	}
	if p.byTime.n != n {
		b.Fatalf("%d keys", p.byTime.n)
	}
	middle := encodeCursor(p.byTime.at(pos{len(p.byTime.chunks) / 2, 0}).place())
	ownerMiddle := encodeCursor(p.byOwner["owner-42"].at(pos{len(p.byOwner["owner-42"].chunks) / 2, 0}).place())
	run := func(name string, q PageQuery, want int) {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				pg, err := p.Page(q)
				if err != nil || len(pg.Keys) != want {
					b.Fatalf("%d keys, %v", len(pg.Keys), err)
				}
			}
		})
	}
	run("first_100", PageQuery{}, 100)
	run("middle_100", PageQuery{Cursor: middle}, 100)
	run("owner_1pct_first_100", PageQuery{Owner: "owner-42"}, 100)
	run("owner_1pct_middle_100", PageQuery{Owner: "owner-42", Cursor: ownerMiddle}, 100)
	// Filters that scan: their cost is the keys examined.
	run("env_1pct_first_100", PageQuery{Environment: keyledger.EnvTest}, 100)
	run("status_active_first_100", PageQuery{Status: keyledger.StatusActive, Now: pageBase}, 100)
	run("hint_0.01pct_all_100", PageQuery{Hint: "rare"}, 100)
	run("name_prefix_none", PageQuery{NamePrefix: "nothing"}, 0)

	// What a snapshot load adds: building the indexes of a million
	// records (the records stay), from a snapshot of this version (its
	// records in index order, see cut) and of an older one (any order).
	var sorted, unsorted []*keyledger.Key
	for at := p.byTime.last(); at.c >= 0; at = p.byTime.prev(at) {
		sorted = append(sorted, p.byTime.at(at).k)
	}
	slices.Reverse(sorted)
	for _, k := range p.records {
		unsorted = append(unsorted, k)
	}
	for _, in := range []struct {
		name    string
		records []*keyledger.Key
	}{{"build_indexes_sorted", sorted}, {"build_indexes_unsorted", unsorted}} {
		b.Run(in.name, func(b *testing.B) {
			var mem runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&mem)
			before := mem.HeapAlloc
			x, o := buildIndexes(in.records, p.intern)
			runtime.GC()
			runtime.ReadMemStats(&mem)
			held := mem.HeapAlloc - before
			runtime.KeepAlive(x)
			runtime.KeepAlive(o)
			for b.Loop() {
				buildIndexes(in.records, p.intern)
			}
			b.ReportMetric(float64(held)/n, "index-bytes/key")
		})
	}
}
