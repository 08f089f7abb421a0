package projector

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

func hashOf(i int) keyledger.Hash {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return sha256.Sum256(b[:])
}

func TestTable(t *testing.T) {
	tb := NewTable(0)
	const n = 5000 // forces several grows from the minimum capacity
	for i := 0; i < n; i++ {
		tb.insert(newEntry(hashOf(i), fmt.Sprintf("k%d", i)))
	}
	if tb.Len() != n {
		t.Fatalf("len %d", tb.Len())
	}
	for i := 0; i < n; i++ {
		h := hashOf(i)
		if e := tb.Lookup(&h); e == nil || e.ID() != fmt.Sprintf("k%d", i) {
			t.Fatalf("lookup %d: %+v", i, e)
		}
		if e := tb.ByID(fmt.Sprintf("k%d", i)); e == nil || e.Hash != h {
			t.Fatalf("by id %d: %+v", i, e)
		}
	}
	for i := n; i < n+100; i++ {
		h := hashOf(i)
		if e := tb.Lookup(&h); e != nil {
			t.Fatalf("phantom %d", i)
		}
		if tb.ByID(fmt.Sprintf("k%d", i)) != nil {
			t.Fatalf("phantom id %d", i)
		}
	}
	// Replacing keeps the id index pointing at the slot.
	d := tb.data.Load()
	s := tb.byID(d, "k7")
	tb.replace(s, d.slots[s].e.Load().revokedCopy())
	h := hashOf(7)
	if e := tb.Lookup(&h); !e.Revoked || tb.ByID("k7") != e {
		t.Fatalf("after replace: %+v", e)
	}
	if load := float64(tb.Len()) / float64(len(tb.data.Load().slots)); load > maxLoad {
		t.Fatalf("load factor %.2f above %.2f", load, maxLoad)
	}
}

// Readers never miss a present key while the writer grows and revokes.
func TestTable_concurrentGrowth(t *testing.T) {
	tb := NewTable(0)
	const total = 20000
	const readers = 4
	var inserted atomic.Int64
	stop := make(chan struct{})
	// Each reader reports once it has looked keys up in the fully grown
	// table, so the test stops them only after that.
	sawAll := make(chan struct{}, readers)
	var wg sync.WaitGroup
	var failures atomic.Int64
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			afterGrowth := 0
			for i := r; ; i += 7 {
				select {
				case <-stop:
					return
				default:
				}
				n := int(inserted.Load())
				if n == 0 {
					continue
				}
				k := i % n
				h := hashOf(k)
				if e := tb.Lookup(&h); e == nil || e.Hash != h {
					failures.Add(1)
				}
				if n == total {
					if afterGrowth++; afterGrowth == 1000 {
						sawAll <- struct{}{}
					}
				}
			}
		}(r)
	}
	for i := 0; i < total; i++ {
		tb.insert(newEntry(hashOf(i), fmt.Sprintf("k%d", i)))
		inserted.Store(int64(i + 1))
		if i%3 == 0 {
			d := tb.data.Load()
			s := tb.byID(d, fmt.Sprintf("k%d", i))
			tb.replace(s, d.slots[s].e.Load().revokedCopy())
		}
	}
	timeout := time.After(30 * time.Second)
	for r := 0; r < readers; r++ {
		select {
		case <-sawAll:
		case <-timeout:
			close(stop)
			wg.Wait()
			t.Fatalf("only %d of %d readers looked keys up after the table grew", r, readers)
		}
	}
	close(stop)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d lookups of present keys failed during growth", f)
	}
}

// BenchmarkTable_memory reports the heap held per key with a million keys
// in the table, as a verifier node holds them (no admin records).
func BenchmarkTable_memory(b *testing.B) {
	for b.Loop() {
		const n = 1_000_000
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		p := New(nil, Options{})
		p.table.reserve(n)
		at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		owners := []string{"acme", "globex", "initech", "umbrella"}
		perms := [][]string{{"all"}, {"workflows:read"}, {"storage:read", "storage:write"}}
		for i := 0; i < n; i++ {
			h := hashOf(i)
			p.Apply(uint64(i+1), &events.KeyCreated{
				Header:      events.Header{Type: events.TypeKeyCreated, V: 1, At: at, KeyID: fmt.Sprintf("key_%032x", i)},
				Environment: keyledger.EnvLive, Permissions: perms[i%3], Owner: owners[i%4], Hash: h.String(),
			})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/key")
		runtime.KeepAlive(p)
	}
}

// hasID reports whether the entry's id is id (isID, packing it first).
func (e *Entry) hasID(id string) bool {
	b, ok := packID(id)
	return e.isID(id, b, ok)
}

// newEntry returns an entry with hash h and key id id.
func newEntry(h keyledger.Hash, id string) *Entry {
	e := &Entry{Hash: h}
	x := &Extra{}
	e.setID(id, x)
	e.Extra = x.orNil()
	return e
}

func TestPackID(t *testing.T) {
	canonical := events.NewKeyID()
	for _, tc := range []struct {
		id   string
		pack bool
	}{
		{canonical, true},
		{"key_0123456789abcdef0123456789abcdef", true},
		{"key_00000000000000000000000000000000", true},
		{"key_0123456789ABCDEF0123456789abcdef", false}, // upper case would not unpack to itself
		{"key_0123456789abcdef0123456789abcde", false},  // short
		{"key_0123456789abcdef0123456789abcdef0", false},
		{"kez_0123456789abcdef0123456789abcdef", false},
		{"key_0123456789abcdef0123456789abcdeg", false},
		{"k1", false},
	} {
		t.Run(tc.id, func(t *testing.T) {
			var h keyledger.Hash
			h[0] = 1
			e := newEntry(h, tc.id)
			if _, ok := packID(tc.id); ok != tc.pack {
				t.Fatalf("packs: %v, want %v", ok, tc.pack)
			}
			if tc.pack != (e.Extra == nil) {
				t.Fatalf("kept as text: %v", e.Extra != nil)
			}
			if got := e.ID(); got != tc.id {
				t.Fatalf("ID() = %q", got)
			}
			if got := e.Headers().ID[0]; got != tc.id {
				t.Fatalf("header = %q", got)
			}
			if !e.hasID(tc.id) || e.hasID(tc.id+"0") || e.hasID("key_ffffffffffffffffffffffffffffffff") {
				t.Fatal("hasID")
			}
		})
	}
}

// Every id either packs and unpacks to itself or is kept as it is.
func FuzzPackID(f *testing.F) {
	f.Add("key_0123456789abcdef0123456789abcdef")
	f.Add("key_0123456789abcdef0123456789abcdeF")
	f.Fuzz(func(t *testing.T, id string) {
		if id == "" {
			return // no key has one (events.ValidKeyID)
		}
		e := newEntry(keyledger.Hash{}, id)
		if got := string(e.appendID(nil)); got != id {
			t.Fatalf("%q came back as %q", id, got)
		}
		if !e.hasID(id) {
			t.Fatalf("%q: hasID false", id)
		}
	})
}

// A table of both kinds of id finds each key by id, and a probe passes
// keys whose tag differs without confusing keys whose tag is the same.
func TestTable_idsAndTags(t *testing.T) {
	tb := NewTable(0)
	var ids []string
	for i := 0; i < 3000; i++ {
		id := events.NewKeyID()
		if i%2 == 1 {
			id = fmt.Sprintf("legacy-%d", i)
		}
		ids = append(ids, id)
		tb.insert(newEntry(hashOf(i), id))
	}
	// Two hashes that place and tag alike, differing past the tag.
	a, b := hashOf(-1), hashOf(-1)
	b[31] ^= 1
	tb.insert(newEntry(a, "twin-a"))
	tb.insert(newEntry(b, "twin-b"))
	for i, id := range ids {
		h := hashOf(i)
		if e := tb.ByID(id); e == nil || e.Hash != h {
			t.Fatalf("by id %s: %+v", id, e)
		}
		if e := tb.Lookup(&h); e == nil || e.ID() != id {
			t.Fatalf("lookup %d: %+v", i, e)
		}
	}
	if e := tb.Lookup(&a); e == nil || e.ID() != "twin-a" {
		t.Fatalf("twin a: %+v", e)
	}
	if e := tb.Lookup(&b); e == nil || e.ID() != "twin-b" {
		t.Fatalf("twin b: %+v", e)
	}
	c := a
	c[20] ^= 1
	if e := tb.Lookup(&c); e != nil {
		t.Fatalf("a hash of no key found %s", e.ID())
	}
}

// The entry stays at 112 bytes with what the verify path reads in its
// first cache line: the table's bytes per key depend on it.
func TestEntry_layout(t *testing.T) {
	if s := unsafe.Sizeof(Entry{}); s != 112 {
		t.Errorf("Entry is %d bytes, want 112", s)
	}
	if o := unsafe.Offsetof(Entry{}.Extra) + unsafe.Sizeof(Entry{}.Extra); o > 64 {
		t.Errorf("the verify path's fields end at byte %d, past the first cache line", o)
	}
}

// BenchmarkSnapshot_load times loading a snapshot of a million keys into
// an empty projector, as a node's cold start does (without the stream:
// see keyledger bench coldstart for the whole start).
func BenchmarkSnapshot_load(b *testing.B) {
	for _, n := range []int{1_000_000, 10_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) { benchmarkSnapshotLoad(b, n) })
	}
}

// benchmarkSnapshotLoad times loading a snapshot of n keys, written (and
// so in the page cache) just before, as a node restarting finds it.
func benchmarkSnapshotLoad(b *testing.B, n int) {
	src := New(nil, Options{})
	src.table.reserve(n)
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < n; i++ {
		h := hashOf(i)
		src.Apply(uint64(i+1), &events.KeyCreated{
			Header:      events.Header{Type: events.TypeKeyCreated, V: 1, At: at, KeyID: fmt.Sprintf("key_%032x", i)},
			Environment: keyledger.EnvLive, Permissions: []string{"workflows:read"}, Owner: "acme", Hash: h.String(),
		})
	}
	c := &snapshotCut{meta: snapshotMeta{seq: uint64(n)}}
	c.entries, c.layout = src.table.cutLayout()
	path, err := src.writeSnapshot(b.TempDir(), c)
	if err != nil {
		b.Fatal(err)
	}
	c, src = nil, nil
	runtime.GC()
	b.ResetTimer()
	for b.Loop() {
		p := New(nil, Options{})
		if _, err := p.loadSnapshot(path, snapshotMeta{seq: uint64(n)}); err != nil {
			b.Fatal(err)
		}
		if p.table.Len() != n {
			b.Fatalf("%d keys loaded", p.table.Len())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/key")
}
