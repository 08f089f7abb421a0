package projector

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

// layoutSource is a projector of n keys, every third with an id not of
// keyledger's form (kept as text) and every fifth revoked.
func layoutSource(tb testing.TB, n int) *Projector {
	tb.Helper()
	p := New(nil, Options{})
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("key_%032x", i)
		if i%3 == 1 {
			id = fmt.Sprintf("Imported-%d", i)
		}
		h := hashOf(i)
		p.Apply(uint64(2*i+1), &events.KeyCreated{
			Header:      events.Header{Type: events.TypeKeyCreated, V: 1, At: at, KeyID: id},
			Environment: keyledger.EnvLive, Permissions: []string{"workflows:read"}, Owner: "acme", Hash: h.String(),
		})
		if i%5 == 0 {
			p.Apply(uint64(2*i+2), &events.KeyRevoked{Header: events.Header{Type: events.TypeKeyRevoked, V: 1, At: at, KeyID: id}})
		}
	}
	if p.table.Len() != n {
		tb.Fatalf("%d keys applied, want %d", p.table.Len(), n)
	}
	return p
}

// writeCut writes src's table as a snapshot at seq, its layout changed
// by edit (nil: none stored).
func writeCut(tb testing.TB, src *Projector, seq uint64, edit func(*layout) *layout) string {
	tb.Helper()
	c := &snapshotCut{meta: snapshotMeta{seq: seq}}
	c.entries, c.layout = src.table.cutLayout()
	c.layout = edit(c.layout)
	path, err := src.writeSnapshot(tb.TempDir(), c)
	if err != nil {
		tb.Fatal(err)
	}
	return path
}

// asVersion4 rewrites a snapshot written without a layout as version 4
// wrote it: the same but for the magic and the header's capacity (0).
func asVersion4(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	const capAt = len(snapshotMagic) + 8 + 8 + 32 + 8 + 8 + 8
	body := append([]byte(snapshotMagicV4), b[len(snapshotMagic):capAt]...)
	body = append(body, b[capAt+8:len(b)-sha256.Size]...)
	sum := sha256.Sum256(body)
	out := filepath.Join(tb.TempDir(), filepath.Base(path))
	if err := os.WriteFile(out, append(body, sum[:]...), 0o600); err != nil {
		tb.Fatal(err)
	}
	return out
}

// A snapshot stores the table's layout (capacity, slots, id index and
// its hash's key), and a load takes it as it is when it leaves room for
// the tail; otherwise, and for a snapshot without one (version 4
// included), the load places the entries again. Either way the loaded
// table finds every key by hash and by id.
func TestSnapshot_layout(t *testing.T) {
	const n = 3000
	src := layoutSource(t, n)
	keep := func(l *layout) *layout { return l }
	none := func(*layout) *layout { return nil }
	srcCap := len(src.table.data.Load().slots)
	for _, tc := range []struct {
		name       string
		path       func() string
		tail       uint64
		wantLayout bool
	}{
		{"the layout, with room for the tail", func() string { return writeCut(t, src, n, keep) }, 10, true},
		{"the layout, without room for the tail", func() string { return writeCut(t, src, n, keep) }, 4 * n, false},
		{"no layout stored", func() string { return writeCut(t, src, n, none) }, 0, false},
		{"version 4", func() string { return asVersion4(t, writeCut(t, src, n, none)) }, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(nil, Options{})
			if _, err := p.loadSnapshot(tc.path(), snapshotMeta{seq: n + tc.tail}); err != nil {
				t.Fatal(err)
			}
			d := p.table.data.Load()
			if got := p.table.idKey == src.table.idKey && len(d.slots) == srcCap; got != tc.wantLayout {
				t.Errorf("layout taken: %v, want %v", got, tc.wantLayout)
			}
			if len(d.slots) < capacityFor(n+int(tc.tail)) {
				t.Errorf("capacity %d has no room for %d keys and a tail of %d", len(d.slots), n, tc.tail)
			}
			if p.table.Digest() != src.table.Digest() {
				t.Fatal("the loaded table differs")
			}
			src.table.Range(func(want *Entry) bool {
				if e := p.table.Lookup(&want.Hash); e == nil || e.ID() != want.ID() || e.Revoked != want.Revoked {
					t.Fatalf("lookup of %s: %+v", want.ID(), e)
				}
				if e := p.table.ByID(want.ID()); e == nil || e.Hash != want.Hash {
					t.Fatalf("by id %s: %+v", want.ID(), e)
				}
				return true
			})
			absent := hashOf(-7)
			if p.table.Lookup(&absent) != nil || p.table.ByID("key_ffffffffffffffffffffffffffffffff") != nil || p.table.ByID("Imported-x") != nil {
				t.Fatal("a key that is not there was found")
			}
			// The table goes on growing and indexing from there.
			for i := n; i < n+int(tc.tail)+10; i++ {
				id := fmt.Sprintf("key_%032x", i)
				p.table.insert(newEntry(hashOf(i), id))
				if e := p.table.ByID(id); e == nil || e.Hash != hashOf(i) {
					t.Fatalf("after the load, by id %s: %+v", id, e)
				}
			}
		})
	}
}

// A layout that does not hold together is refused (the file's checksum
// matching: these are files written wrong, not damaged ones), and so the
// node replays.
func TestSnapshot_badLayout(t *testing.T) {
	const n = 500
	src := layoutSource(t, n)
	for _, tc := range []struct {
		name string
		edit func(*layout) *layout
	}{
		{"a slot past the capacity", func(l *layout) *layout { l.slots[len(l.slots)-1] = uint32(len(l.ids)); return l }},
		{"an id index naming a slot past the capacity", func(l *layout) *layout {
			for j, v := range l.ids {
				if v != 0 {
					l.ids[j] = uint32(len(l.ids)) + 1
					break
				}
			}
			return l
		}},
		{"an id index missing a key", func(l *layout) *layout {
			for j, v := range l.ids {
				if v != 0 {
					l.ids[j] = 0
					break
				}
			}
			return l
		}},
		{"a capacity with no room for the entries", func(l *layout) *layout {
			l.ids = l.ids[:n]
			return l
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeCut(t, src, n, tc.edit)
			p := New(nil, Options{})
			if _, err := p.loadSnapshot(path, snapshotMeta{seq: n}); !errors.Is(err, errSnapshot) {
				t.Fatalf("load: %v, want a refusal", err)
			}
			if p.table.Len() != 0 {
				t.Fatal("a refused snapshot left keys in the table")
			}
		})
	}
}
