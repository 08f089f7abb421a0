package projector

import (
	"cmp"
	"slices"
	"strings"

	keyledger "github.com/keyledger/keyledger"
)

// The record index orders an admin node's key records by creation, so
// that a page of the newest keys, or of the keys after a cursor, costs a
// binary search and the records it returns rather than a sort of all of
// them. It is kept by the apply goroutine under recMu, with the records.

// place is a key's place in the order of the index: its creation time
// (unix nanoseconds) and id. Ids are unique, so no two keys share one. A
// record's CreatedAt and ID never change, so neither does its place.
type place struct {
	at int64
	id string
}

func recordPlace(k *keyledger.Key) place { return place{at: k.CreatedAt.UnixNano(), id: k.ID} }

// comparePlaces orders places oldest first: by creation time, then by id.
func comparePlaces(a, b place) int {
	if c := cmp.Compare(a.at, b.at); c != 0 {
		return c
	}
	return strings.Compare(a.id, b.id)
}

// indexEntry is one key in a keyIndex, 16 bytes: its creation time and
// its current record. A change of the record (every change stores a
// copy) swaps the pointer in place (keyIndex.replace), so reading a page
// needs no lookup by id, and a snapshot collects the records in order.
type indexEntry struct {
	at int64 // k.CreatedAt, unix nanoseconds
	k  *keyledger.Key
}

func (e indexEntry) place() place { return place{at: e.at, id: e.k.ID} }

// compare orders an entry against a place (the id is read only on a tie
// of creation times).
func (e indexEntry) compare(p place) int {
	if c := cmp.Compare(e.at, p.at); c != 0 {
		return c
	}
	return strings.Compare(e.k.ID, p.id)
}

func compareEntries(a, b indexEntry) int { return a.compare(b.place()) }

// indexChunk bounds the length of a chunk: an insertion out of order
// moves at most this many entries (and, when it splits a chunk, the chunk
// list), never the whole index.
const indexChunk = 1024

// keyIndex holds keys oldest first, in chunks: every chunk is sorted and
// non-empty, and every entry of a chunk sorts before every entry of the
// next. Newest first is reading it backwards. Keys are only ever added
// (a revoked key keeps its record). Appending, the common case since
// creation times increase, is amortised O(1); a key created out of order
// (an admin node with a clock slightly behind, an import) costs a binary
// search and a move of at most indexChunk entries.
type keyIndex struct {
	chunks [][]indexEntry
	n      int
}

// pos is a position in a keyIndex: chunk c, entry i. c < 0 is before the
// first entry.
type pos struct{ c, i int }

// chunkOf is the first chunk whose last entry is at or after p: the one
// that holds p's place (len(chunks) when p sorts after everything).
func (x *keyIndex) chunkOf(p place) int {
	c, _ := slices.BinarySearchFunc(x.chunks, p, func(ch []indexEntry, p place) int {
		return ch[len(ch)-1].compare(p)
	})
	return c
}

// insert adds e, whose key must not be in the index yet.
func (x *keyIndex) insert(e indexEntry) {
	x.n++
	p := e.place()
	last := len(x.chunks) - 1
	if last < 0 || x.chunks[last][len(x.chunks[last])-1].compare(p) < 0 {
		if last < 0 || len(x.chunks[last]) >= indexChunk {
			x.chunks = append(x.chunks, append(make([]indexEntry, 0, 16), e))
			return
		}
		x.chunks[last] = append(x.chunks[last], e)
		return
	}
	c := x.chunkOf(p)
	ch := x.chunks[c]
	i, _ := slices.BinarySearchFunc(ch, p, indexEntry.compare)
	ch = slices.Insert(ch, i, e)
	if len(ch) <= indexChunk {
		x.chunks[c] = ch
		return
	}
	// Split in halves, the second into an array of its own, so that an
	// append to the first never writes over it.
	half := len(ch) / 2
	second := append(make([]indexEntry, 0, indexChunk), ch[half:]...)
	x.chunks[c] = ch[:half]
	x.chunks = slices.Insert(x.chunks, c+1, second)
}

// replace points the entry of k's key at k, the key's new record. It
// reports whether the key was in the index.
func (x *keyIndex) replace(k *keyledger.Key) bool {
	p := recordPlace(k)
	c := x.chunkOf(p)
	if c == len(x.chunks) {
		return false
	}
	i, ok := slices.BinarySearchFunc(x.chunks[c], p, indexEntry.compare)
	if ok {
		x.chunks[c][i].k = k
	}
	return ok
}

// last is the position of the newest entry (c < 0 when empty).
func (x *keyIndex) last() pos {
	if len(x.chunks) == 0 {
		return pos{-1, 0}
	}
	c := len(x.chunks) - 1
	return pos{c, len(x.chunks[c]) - 1}
}

// before is the position of the newest entry that sorts strictly before
// p (c < 0 when none does).
func (x *keyIndex) before(p place) pos {
	c := x.chunkOf(p)
	if c == len(x.chunks) {
		return x.last()
	}
	if i, _ := slices.BinarySearchFunc(x.chunks[c], p, indexEntry.compare); i > 0 {
		return pos{c, i - 1}
	}
	if c == 0 {
		return pos{-1, 0}
	}
	return pos{c - 1, len(x.chunks[c-1]) - 1}
}

// at returns the entry at p, which must be valid.
func (x *keyIndex) at(p pos) indexEntry { return x.chunks[p.c][p.i] }

// prev steps p to the next older entry.
func (x *keyIndex) prev(p pos) pos {
	if p.i > 0 {
		return pos{p.c, p.i - 1}
	}
	if p.c--; p.c >= 0 {
		p.i = len(x.chunks[p.c]) - 1
	}
	return p
}

// buildIndex returns the index of entries, which must be sorted oldest
// first, in full chunks sharing their array (each capped at its own end,
// so that appending to one copies it rather than writing over the next).
func buildIndex(entries []indexEntry) *keyIndex {
	x := &keyIndex{n: len(entries), chunks: make([][]indexEntry, 0, (len(entries)+indexChunk-1)/indexChunk)}
	for lo := 0; lo < len(entries); lo += indexChunk {
		hi := min(lo+indexChunk, len(entries))
		x.chunks = append(x.chunks, entries[lo:hi:hi])
	}
	return x
}

// buildIndexes returns the indexes of records (a snapshot's: in index
// order when the snapshot was written by this version, see cut), with
// the owners as intern returns them.
func buildIndexes(records []*keyledger.Key, intern func(string) string) (*keyIndex, map[string]*keyIndex) {
	all := make([]indexEntry, len(records))
	for i, k := range records {
		all[i] = indexEntry{at: k.CreatedAt.UnixNano(), k: k}
	}
	if !slices.IsSortedFunc(all, compareEntries) {
		slices.SortFunc(all, compareEntries)
	}
	// Every owner's entries, in the same order, in one array: one map
	// lookup per key, for the owner's number.
	num := map[string]int32{}
	var names []string
	var count []int
	of := make([]int32, len(all))
	for i, e := range all {
		o, ok := num[e.k.Owner]
		if !ok {
			o = int32(len(names))
			num[e.k.Owner] = o
			names, count = append(names, e.k.Owner), append(count, 0)
		}
		of[i] = o
		count[o]++
	}
	next := make([]int, len(names))
	for o := 1; o < len(names); o++ {
		next[o] = next[o-1] + count[o-1]
	}
	backing := make([]indexEntry, len(all))
	for i, e := range all {
		backing[next[of[i]]] = e
		next[of[i]]++
	}
	byOwner := make(map[string]*keyIndex, len(names))
	for o, name := range names {
		end := next[o] // each owner's next is now its end
		byOwner[intern(name)] = buildIndex(backing[end-count[o] : end : end])
	}
	return buildIndex(all), byOwner
}
