package projector

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/internal/hugepages"
)

// entryTables are what a snapshot's entries name by number: owners and
// permission lists (as interned names, with their sets over this node's
// catalog). max bounds a list's length: the file's.
type entryTables struct {
	owners []string
	names  []uint32
	perms  []keyledger.Permissions
	max    int
}

// newEntries allocates n entries at once (a run of a snapshot's), on
// huge pages where the kernel has them: lookups reach them at random.
func newEntries(n int) []Entry {
	es := make([]Entry, n)
	hugepages.Slice(es)
	return es
}

// slotRange is where a run of entries' slots lie, when they have slots
// (a layout): [lo, hi].
type slotRange struct {
	on     bool
	lo, hi uint64
}

// readEntries reads len(es) entries into es. Format 6 writes an id of
// keyledger's form as its 16 bytes (packed); earlier ones as text. With
// slots, each entry has its slot, increasing, within the range; place is
// given each entry with its slot (0 without), or is nil. A malformed
// entry is an error, or (cut short) r.err with the entries before it
// read.
func (r *snapReader) readEntries(es []Entry, packed bool, slots slotRange, tabs *entryTables, place func(uint64, *Entry)) (imported int64, err error) {
	next := uint64(0) // the slot after the previous entry's
	for i := range es {
		e := &es[i]
		slot := uint64(0)
		if slots.on {
			// Increasing by construction: two entries never share a
			// slot. Nor do two parts (see readPartTable), which cores
			// place at once.
			slot = next + r.uvarint()
			if slot < slots.lo || slot > slots.hi || slot < next {
				return 0, fmt.Errorf("%w: bad slot", errSnapshot)
			}
			next = slot + 1
		}
		if len(r.b) < len(e.Hash) {
			r.fail()
			break
		}
		copy(e.Hash[:], r.b)
		r.b = r.b[len(e.Hash):]
		// An id of keyledger's form packs into the entry; another is kept
		// as text with the extra fields, read below.
		var idText string
		switch {
		case packed && len(r.b) > 0 && r.b[0] == 0:
			if len(r.b) < 1+len(e.id) {
				r.fail()
				break
			}
			copy(e.id[:], r.b[1:])
			r.b = r.b[1+len(e.id):]
		default:
			n := r.uvarint()
			if n > uint64(len(r.b)) {
				r.fail()
				break
			}
			var ok bool
			if e.id, ok = packID(r.b[:n]); !ok {
				idText = string(r.b[:n])
			}
			r.b = r.b[n:]
		}
		oi, pi := r.uvarint(), r.uvarint()
		if oi >= uint64(len(tabs.owners)) || pi >= uint64(len(tabs.names)) {
			if r.err != nil {
				break
			}
			return 0, fmt.Errorf("%w: bad table index", errSnapshot)
		}
		e.Owner, e.names, e.Perms = tabs.owners[oi], tabs.names[pi], tabs.perms[pi]
		flags := r.byte1()
		e.Environment = keyledger.Environment(flags & 0x3)
		e.Revoked = flags&0x80 != 0
		e.Imported = flags&0x20 != 0
		e.Disabled = flags&0x10 != 0
		e.ExpiresAt = int64(r.u64())
		var rl *keyledger.RateLimit
		if flags&0x40 != 0 {
			rl = &keyledger.RateLimit{PerSecond: math.Float64frombits(r.u64()), Burst: int(r.uvarint())}
		}
		e.Rev = r.uvarint()
		if flags&0x08 != 0 {
			x := &Extra{RateLimit: rl, AllowedIPs: r.strs(tabs.max)}
			if m := r.str(); m != "" {
				x.Metadata = []byte(m)
			}
			x.Scope, x.RollCap = r.str(), int64(r.u64())
			if x.Credits = r.credits(); x.Credits != nil {
				x.CreditsRev, x.CreditsAt = r.uvarint(), int64(r.u64())
				x.CreditsKey = r.str()
			}
			if len(x.AllowedIPs) > 0 {
				var err error
				if x.Allowlist, _, err = keyledger.ParseAllowlist(x.AllowedIPs); err != nil {
					return 0, fmt.Errorf("%w: bad allowlist", errSnapshot)
				}
			}
			e.Extra = x
		}
		if idText != "" {
			if e.Extra == nil {
				e.Extra = &Extra{}
			}
			e.Extra.IDText = idText
		}
		if r.err != nil {
			break
		}
		// No duplicate check: the checksum vouches that this is the file
		// a projector wrote, and a projector's table has no duplicates.
		// (Probing the id index for each key would double the load time.)
		if place != nil {
			place(slot, e)
		}
		if e.Imported {
			imported++
		}
	}
	return imported, nil
}

// readIDIndex reads the id index of a layout of the given capacity into
// d when the load takes the layout (use), else skips it.
func (r *snapReader) readIDIndex(d *tableData, capacity, nEntries uint64, use bool) error {
	if capacity == 0 {
		return nil
	}
	if uint64(len(r.b)) < 4*capacity {
		r.fail()
		return nil
	}
	idx := r.b[:4*capacity]
	r.b = r.b[4*capacity:]
	if !use {
		return nil
	}
	// Each names a slot (+1) or none (0); as many as entries.
	var named uint64
	for j := range d.ids {
		v := binary.LittleEndian.Uint32(idx[4*j:])
		if uint64(v) > capacity {
			return fmt.Errorf("%w: bad id index", errSnapshot)
		}
		if v != 0 {
			named++
		}
		d.ids[j] = v
	}
	if named != nEntries {
		return fmt.Errorf("%w: bad id index", errSnapshot)
	}
	return nil
}

// readPartTable reads format 6's part table, which the file's last 8
// bytes (before its checksum) locate, for entries that begin at off:
// the parts, and where the entries end and the table begins. With a
// layout of the capacity, each part's slots lie in a range of their own,
// after the part before's: read before any checksum is known, that is
// what lets the cores place parts at once whatever the file holds.
func readPartTable(body []byte, off int, nEntries, capacity uint64) (parts []snapPart, end, table int, err error) {
	bad := fmt.Errorf("%w: bad part table", errSnapshot)
	if len(body) < off+8 {
		return nil, 0, 0, bad
	}
	t := binary.LittleEndian.Uint64(body[len(body)-8:])
	if t < uint64(off) || t > uint64(len(body)-8) {
		return nil, 0, 0, bad
	}
	table = int(t)
	r := &snapReader{b: body[table : len(body)-8]}
	n := r.uvarint()
	if n > uint64(len(r.b))/(4+sha256.Size) {
		return nil, 0, 0, bad
	}
	parts = make([]snapPart, 0, n)
	at, first := off, uint64(0)
	free := uint64(0) // the first slot no part before has
	for range n {
		c, size, lo, hi := r.uvarint(), r.uvarint(), r.uvarint(), r.uvarint()
		if r.err != nil || len(r.b) < sha256.Size || c > nEntries-first || size > uint64(table-at) {
			return nil, 0, 0, bad
		}
		slots := slotRange{on: capacity > 0, lo: lo, hi: hi}
		if slots.on && c > 0 {
			if lo < free || hi < lo || hi >= capacity {
				return nil, 0, 0, bad
			}
			free = hi + 1
		}
		parts = append(parts, snapPart{first: int(first), n: int(c), off: at, end: at + int(size), slots: slots, sum: r.b[:sha256.Size]})
		r.b = r.b[sha256.Size:]
		at, first = at+int(size), first+c
	}
	if first != nEntries || len(r.b) != 0 {
		return nil, 0, 0, bad
	}
	return parts, at, table, nil
}

// readParts reads format 6's entries, which begin at r, on every core:
// each takes parts (checking a part's checksum and reading its entries,
// into their slots when the load takes the layout) and, once, the file's
// checksum, which covers all but the parts. Without the layout the
// entries are then placed and their ids indexed, on two cores as for
// version 4. r is left after the part table's place, at the id index.
// ok reports whether every checksum matched.
func (p *Projector) readParts(r *snapReader, body, sum []byte, nEntries int, tabs *entryTables, table *Table, d *tableData, capacity uint64, useLayout bool) (imported int64, ok bool, err error) {
	off := len(body) - len(r.b)
	parts, end, tableAt, err := readPartTable(body, off, uint64(nEntries), capacity)
	if err != nil {
		return 0, false, err
	}
	r.b = body[end:tableAt]
	var place func(uint64, *Entry)
	if useLayout {
		place = d.fill
	}
	type result struct {
		entries  []Entry
		imported int64
		ok       bool
		err      error
	}
	results := make([]result, len(parts))
	var fileOK atomic.Bool
	var taken atomic.Int64 // the next task: -1 is the file's checksum, then each part
	taken.Store(-1)
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(parts)+1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(taken.Add(1)) - 1
				if k >= len(parts) {
					return
				}
				if k < 0 {
					h := sha256.New()
					h.Write(body[:off])
					h.Write(body[end:])
					fileOK.Store(bytes.Equal(h.Sum(nil), sum))
					continue
				}
				pt, res := parts[k], &results[k]
				got := sha256.Sum256(body[pt.off:pt.end])
				res.ok = bytes.Equal(got[:], pt.sum)
				// Each part's entries are an allocation of their own, so
				// that the cores share the zeroing or first touch of
				// their memory too.
				pr := &snapReader{b: body[pt.off:pt.end]}
				res.entries = newEntries(pt.n)
				res.imported, res.err = pr.readEntries(res.entries, true, pt.slots, tabs, place)
				if res.err == nil && pr.err == nil && len(pr.b) != 0 {
					res.err = fmt.Errorf("%w: trailing data in a part", errSnapshot)
				} else if res.err == nil {
					res.err = pr.err
				}
			}
		}()
	}
	wg.Wait()
	ok = fileOK.Load()
	for _, res := range results {
		if res.err != nil {
			return 0, false, res.err
		}
		ok = ok && res.ok
		imported += res.imported
	}
	if !ok {
		return 0, false, nil
	}
	if !useLayout {
		ids := startIndexer(table, d, func() bool { return true }, nEntries, true)
		for _, res := range results {
			for i := range res.entries {
				ids.add(table.placeSlot(d, &res.entries[i]))
			}
		}
		ids.finish()
	}
	return imported, true, r.readIDIndex(d, capacity, uint64(nEntries), useLayout)
}
