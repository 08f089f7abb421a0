package projector

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
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

// asVersion4 rewrites a version-5 snapshot written without a layout as
// version 4 wrote it: the same but for the magic and the header's
// capacity (0).
func asVersion4(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if string(b[:len(snapshotMagicV5)]) != snapshotMagicV5 {
		tb.Fatalf("%s is not of version 5", path)
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

// checkLoaded fails unless p's table, loaded with room for a tail,
// finds every key of src's by hash and by id, finds no others, and goes
// on taking keys.
func checkLoaded(t *testing.T, p, src *Projector, n int, tail uint64) {
	t.Helper()
	d := p.table.data.Load()
	if len(d.slots) < capacityFor(n+int(tail)) {
		t.Errorf("capacity %d has no room for %d keys and a tail of %d", len(d.slots), n, tail)
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
	for i := n; i < n+int(tail)+10; i++ {
		id := fmt.Sprintf("key_%032x", i)
		p.table.insert(newEntry(hashOf(i), id))
		if e := p.table.ByID(id); e == nil || e.Hash != hashOf(i) {
			t.Fatalf("after the load, by id %s: %+v", id, e)
		}
	}
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
	} {
		// One part, and 31 (see readParts).
		for _, part := range []int{partEntries, 97} {
			t.Run(fmt.Sprintf("%s/parts of %d", tc.name, part), func(t *testing.T) {
				withPartEntries(t, part)
				p := New(nil, Options{})
				if _, err := p.loadSnapshot(tc.path(), snapshotMeta{seq: n + tc.tail}); err != nil {
					t.Fatal(err)
				}
				d := p.table.data.Load()
				if got := p.table.idKey == src.table.idKey && len(d.slots) == srcCap; got != tc.wantLayout {
					t.Errorf("layout taken: %v, want %v", got, tc.wantLayout)
				}
				checkLoaded(t, p, src, n, tc.tail)
			})
		}
	}
}

// withPartEntries writes parts of n entries for the rest of the test.
func withPartEntries(tb testing.TB, n int) {
	old := partEntries
	partEntries = n
	tb.Cleanup(func() { partEntries = old })
}

// Snapshots that builds before format 6 wrote still load (testdata:
// layoutSource's 1,000 keys, written by the build before, 2dd4664), with
// their layout or without, and version 4 as well.
func TestSnapshot_olderVersions(t *testing.T) {
	const n = 1000
	src := layoutSource(t, n)
	for _, tc := range []struct {
		name       string
		path       func() string
		tail       uint64
		wantLayout bool
	}{
		{"version 5, the layout, with room for the tail", func() string { return "testdata/snapshot-v5-layout.bin" }, 10, true},
		{"version 5, the layout, without room for the tail", func() string { return "testdata/snapshot-v5-layout.bin" }, 4 * n, false},
		{"version 5, no layout", func() string { return "testdata/snapshot-v5.bin" }, 0, false},
		{"version 4", func() string { return asVersion4(t, "testdata/snapshot-v5.bin") }, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(nil, Options{})
			if _, err := p.loadSnapshot(tc.path(), snapshotMeta{seq: n + tc.tail}); err != nil {
				t.Fatal(err)
			}
			// The layout's capacity and id key, as the writer stored
			// them after the header's counts.
			b, err := os.ReadFile(tc.path())
			if err != nil {
				t.Fatal(err)
			}
			const capAt = len(snapshotMagic) + 8 + 8 + 32 + 8 + 8 + 8
			var stored [2]uint64
			capacity := binary.LittleEndian.Uint64(b[capAt:])
			if capacity > 0 {
				stored = [2]uint64{binary.LittleEndian.Uint64(b[capAt+8:]), binary.LittleEndian.Uint64(b[capAt+16:])}
			}
			if got := p.table.idKey == stored && uint64(len(p.table.data.Load().slots)) == capacity; got != tc.wantLayout {
				t.Errorf("layout taken: %v, want %v", got, tc.wantLayout)
			}
			checkLoaded(t, p, src, n, tc.tail)
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

// A format-6 file whose parts do not hold together is refused: damaged
// (a part's bytes, the part table, its place) or written wrong with
// matching checksums (parts whose slots overlap, which two cores would
// otherwise place at once).
func TestSnapshot_badParts(t *testing.T) {
	const n = 500
	withPartEntries(t, 97)
	src := layoutSource(t, n)
	keep := func(l *layout) *layout { return l }
	edit := func(f func(b []byte)) func() string {
		return func() string {
			path := writeCut(t, src, n, keep)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f(b)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			return path
		}
	}
	tableAt := func(b []byte) int { return int(binary.LittleEndian.Uint64(b[len(b)-sha256.Size-8:])) }
	for _, tc := range []struct {
		name string
		path func() string
	}{
		{"a part's bytes changed", edit(func(b []byte) {
			h := hashOf(250)
			i := bytes.Index(b, h[:])
			if i < 0 {
				t.Fatal("key 250's hash is not in the file")
			}
			b[i+3] ^= 1
		})},
		{"a part's checksum changed", edit(func(b []byte) { b[len(b)-sha256.Size-8-1] ^= 1 })},
		{"the part table's place past the file", edit(func(b []byte) {
			binary.LittleEndian.PutUint64(b[len(b)-sha256.Size-8:], uint64(len(b)))
		})},
		{"the part table's place before the entries", edit(func(b []byte) {
			binary.LittleEndian.PutUint64(b[len(b)-sha256.Size-8:], 3)
		})},
		{"a part table that lists more entries than the file", edit(func(b []byte) {
			b[tableAt(b)]++ // the count of parts
		})},
		{"parts whose slots overlap", func() string {
			return writeCut(t, src, n, func(l *layout) *layout {
				l.slots[97] = l.slots[96] // the second part's first, the first's last
				return l
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New(nil, Options{})
			if _, err := p.loadSnapshot(tc.path(), snapshotMeta{seq: n}); !errors.Is(err, errSnapshot) {
				t.Fatalf("load: %v, want a refusal", err)
			}
			if p.table.Len() != 0 {
				t.Fatal("a refused snapshot left keys in the table")
			}
		})
	}
}

// FuzzSnapshot_load loads any bytes as a snapshot: it is refused or
// loaded, never a panic. (A published snapshot reaches a node from the
// bus, and the load reads entries before their checksum is known.)
func FuzzSnapshot_load(f *testing.F) {
	for _, path := range []string{"testdata/snapshot-v5-layout.bin", "testdata/snapshot-v5.bin"} {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:min(len(b), 4096)])
	}
	withPartEntries(f, 7)
	src := layoutSource(f, 30)
	for _, edit := range []func(*layout) *layout{func(l *layout) *layout { return l }, func(*layout) *layout { return nil }} {
		b, err := os.ReadFile(writeCut(f, src, 30, edit))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(dir, "snap.bin")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		p := New(nil, Options{})
		if _, err := p.loadSnapshot(path, snapshotMeta{seq: 40}); err != nil && p.table.Len() != 0 {
			t.Fatal("a refused snapshot left keys in the table")
		}
	})
}
