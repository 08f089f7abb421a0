package projector

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// Snapshots let a node start in well under a second with a million keys:
// it loads the newest snapshot of its table and replays only the events
// after it. A snapshot is a file in Options.SnapshotDir:
//
//	magic "KLSNAP06"
//	header: stream identity (created, unix ns), last applied sequence,
//	        SHA-256 of the event at it, unsigned-through, entry count,
//	        record count, the table's capacity (0: no layout) and the key
//	        of its id index's hash (with a capacity)
//	owner table and permission-list table (each distinct value once)
//	entries in slot order, in parts of partEntries, each entry with its
//	slot (with a capacity: from the part's start, a delta) and its id
//	packed (see writeEntries), then
//	the id index (with a capacity: one number per slot), then records
//	(admin nodes), fixed order of fields; records
//	oldest first (the record index's order, so that a load rebuilds the
//	index without sorting; a file in any order still loads)
//	accounts: plans, owners, and the last event stored on each plan's
//	and owner's subject (every node: they decide what is metered)
//	refused: the events refused on their envelope, through the
//	snapshot's sequence (what the node's checkpoints list: trust.go)
//	part table: per part its entries, bytes, first and last slot and
//	SHA-256; then the table's offset (8 bytes)
//	SHA-256 of everything above but the parts
//
// All integers are little-endian or uvarints. A snapshot is a consistent
// cut: the table, the records and the accounts exactly as of its
// sequence, nothing applied after it (see Projector.cut). A snapshot that
// is corrupt, of another version, of another stream, or ahead of the
// stream is skipped, and the node replays from the start: never a wrong
// table.
//
// Version history. Version 2 records the hash of the event at its
// sequence: a node checks it against the stream before trusting the
// snapshot (see Projector.checkSnapshotHead). Version 3 adds what keys
// that change carry: per entry its last event (Rev), disabled flag and
// Extra; per record metadata, allowed IPs, admin scope, disable and
// update stamps. Version 4 adds credits (per entry with the event that
// set them, per record) and the accounts. Version 5 adds the table's
// layout, which a load takes as it is, where placing ten million entries
// and indexing their ids again at random took most of a load (see
// README, What the profiles showed); version 4 still loads, placing them.
// Version 6 cuts the entries into parts that the cores of a load check
// and read at once, where one core read them while the other checked
// the file, and packs ids (unpacking 32 hex digits was a quarter of the
// reading); version 5 still loads, on one core.
//
// Versions 2 and 3 are refused, and the node replays the stream once. They
// hold no plans, owners or credits: the builds that wrote them did not
// know PlanSet and OwnerSet (they skipped them as undecodable) nor the
// credits of KeyCreated and KeyUpdated (they decoded the events without
// them), and the first build that did still wrote version 3. So their
// table may lack plans, owners and balances that the stream held before
// the snapshot's sequence: keys that nothing meters. Whether the stream held any takes
// reading it up to there (account ids share keys' subject token, so no
// subject filter finds them, and credits hide inside key events), which
// is the replay itself. The header is the same in all three versions, so
// an old snapshot still shows that the stream was replaced (see
// peekSnapshotMeta), and the node fails closed as before.
const (
	snapshotMagic   = "KLSNAP06"
	snapshotMagicV5 = "KLSNAP05"
	snapshotMagicV4 = "KLSNAP04"
	snapshotMagicV3 = "KLSNAP03"
	snapshotMagicV2 = "KLSNAP02"
)

// snapshotName is the file name of the snapshot at seq; names sort by seq.
func snapshotName(seq uint64) string { return fmt.Sprintf("snap-%020d.bin", seq) }

// snapshotMeta identifies the stream a snapshot was taken of.
type snapshotMeta struct {
	streamCreated int64 // KEYS stream creation time, unix ns
	seq           uint64
	// head is the SHA-256 of the stored bytes of the event at seq: the
	// stream a snapshot is used with must still hold that very event.
	head [32]byte
	// unsignedThrough is the keyring's adoption of unsigned events when
	// the snapshot was taken: a table built under another one is not this
	// node's table (adopting an old ledger must replay it).
	unsignedThrough uint64
}

// errReplaced marks a snapshot whose stream is not the one the node
// follows now: KEYS was deleted and recreated, or rewritten. The node
// fails closed instead of replaying a different history over it.
var errReplaced = errors.New("KEYS stream was replaced")

// peekSnapshotMeta reads the metadata at the head of a snapshot file
// without loading (or checksumming) the rest: enough to decide whether the
// stream still matches before paying for a load.
func peekSnapshotMeta(path string) (snapshotMeta, error) {
	f, err := os.Open(path)
	if err != nil {
		return snapshotMeta{}, err
	}
	defer f.Close()
	var b [len(snapshotMagic) + 16 + 32 + 8]byte
	if _, err := io.ReadFull(f, b[:]); err != nil || !knownMagic(string(b[:len(snapshotMagic)])) {
		return snapshotMeta{}, fmt.Errorf("%w: not a keyledger snapshot", errSnapshot)
	}
	r := &snapReader{b: b[len(snapshotMagic):]}
	m := snapshotMeta{streamCreated: int64(r.u64()), seq: r.u64()}
	copy(m.head[:], r.b)
	r.b = r.b[32:]
	m.unsignedThrough = r.u64()
	return m, nil
}

// knownMagic accepts the versions whose header peekSnapshotMeta reads;
// loadSnapshot loads only the current one.
func knownMagic(m string) bool {
	return m == snapshotMagic || m == snapshotMagicV5 || m == snapshotMagicV4 || m == snapshotMagicV3 || m == snapshotMagicV2
}

// errSnapshot marks a snapshot that must not be used.
var errSnapshot = errors.New("unusable snapshot")

type snapWriter struct {
	w   *bufio.Writer
	buf [binary.MaxVarintLen64]byte
}

func (s *snapWriter) uvarint(v uint64) { s.w.Write(s.buf[:binary.PutUvarint(s.buf[:], v)]) }
func (s *snapWriter) u64(v uint64) {
	binary.LittleEndian.PutUint64(s.buf[:8], v)
	s.w.Write(s.buf[:8])
}
func (s *snapWriter) str(v string) { s.uvarint(uint64(len(v))); s.w.WriteString(v) }
func (s *snapWriter) strs(v []string) {
	s.uvarint(uint64(len(v)))
	for _, x := range v {
		s.str(x)
	}
}
func (s *snapWriter) time(t *time.Time) {
	if t == nil {
		s.u64(0)
		return
	}
	s.u64(uint64(t.UnixNano()))
}

// at writes a time that is never unset in practice (an event's), zero
// as 0 all the same: the zero time has no Unix nanoseconds.
func (s *snapWriter) at(t time.Time) {
	if t.IsZero() {
		s.u64(0)
		return
	}
	s.u64(uint64(t.UnixNano()))
}
func (s *snapWriter) flag(b bool) {
	if b {
		s.w.WriteByte(1)
	} else {
		s.w.WriteByte(0)
	}
}
func (s *snapWriter) rateLimit(rl *keyledger.RateLimit) {
	s.flag(rl != nil)
	if rl != nil {
		s.u64(math.Float64bits(rl.PerSecond))
		s.uvarint(uint64(rl.Burst))
	}
}

// credits writes c as a kind byte (0 none, 1 a balance, 2 a balance and
// its refill) and the fields the kind has.
func (s *snapWriter) credits(c *keyledger.Credits) {
	switch {
	case c == nil:
		s.w.WriteByte(0)
		return
	case c.Refill == nil:
		s.w.WriteByte(1)
	default:
		s.w.WriteByte(2)
	}
	s.u64(uint64(c.Remaining))
	if r := c.Refill; r != nil {
		s.str(r.Interval)
		s.u64(uint64(r.Amount))
	}
}

// snapshotCut is what a snapshot holds, collected in one instant between
// two events: entries and records are never modified once stored (every
// change stores a copy), so pointers to them are the state at the cut.
//
// Plans and owners are replaced, never modified, like entries: the cut
// copies the pointers, and the maps they sit in (which do change).
type snapshotCut struct {
	meta    snapshotMeta
	entries []*Entry
	layout  *layout // where the entries sit; nil writes none
	records []*keyledger.Key
	plans   []*keyledger.PlanRecord
	owners  []*keyledger.Owner
	revs    map[string]uint64
	// refused are the events refused on their envelope through seq,
	// for the checkpoints the node publishes after a restart.
	refused []uint64
}

// cut collects a consistent cut of the table, the records and the
// accounts. It holds the apply loop for as long as collecting the
// pointers takes (about 20 ms per million keys; the accounts are few);
// sorting, encoding and writing happen after.
func (p *Projector) cut() (*snapshotCut, error) {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	h := p.head
	if h.seq == 0 {
		return nil, errors.New("projector: nothing applied yet")
	}
	c := &snapshotCut{meta: snapshotMeta{streamCreated: p.streamID, seq: h.seq, head: h.sum(), unsignedThrough: p.ring.UnsignedThrough()}}
	c.entries, c.layout = p.table.cutLayout()
	if p.records != nil {
		p.recMu.RLock()
		c.records = make([]*keyledger.Key, 0, len(p.records))
		if p.byTime.n == len(p.records) {
			// In index order, oldest first: loading rebuilds the index
			// without sorting.
			for _, ch := range p.byTime.chunks {
				for _, e := range ch {
					c.records = append(c.records, e.k)
				}
			}
		} else {
			for _, k := range p.records {
				c.records = append(c.records, k)
			}
		}
		p.recMu.RUnlock()
	}
	// The apply loop changes the accounts only under cutMu, held here:
	// these copies are of the cut. (Their own lock is for the maps'
	// other users.)
	a := p.accounts
	a.mu.RLock()
	c.plans = make([]*keyledger.PlanRecord, 0, len(a.plans))
	for _, r := range a.plans {
		c.plans = append(c.plans, r)
	}
	c.owners = make([]*keyledger.Owner, 0, len(a.owners))
	for _, o := range a.owners {
		c.owners = append(c.owners, o)
	}
	c.revs = make(map[string]uint64, len(a.revs))
	for id, seq := range a.revs {
		c.revs[id] = seq
	}
	a.mu.RUnlock()
	c.refused = p.refused.through(h.seq)
	return c, nil
}

// writeSnapshot writes a cut to dir, atomically: temp file, fsync,
// rename.
func (p *Projector) writeSnapshot(dir string, c *snapshotCut) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	meta, entries, records := c.meta, c.entries, c.records
	owners, permLists := map[string]uint32{}, map[uint32]uint32{}
	var ownerTab []string
	var permTab [][]string
	for _, e := range entries {
		if _, ok := owners[e.Owner]; !ok {
			owners[e.Owner] = uint32(len(ownerTab))
			ownerTab = append(ownerTab, e.Owner)
		}
		if _, ok := permLists[e.names]; !ok {
			permLists[e.names] = uint32(len(permTab))
			permTab = append(permTab, e.Permissions())
		}
	}

	f, err := os.CreateTemp(dir, ".snap-*.tmp")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	sink := &snapSink{f: f, h: sha256.New()}
	s := &snapWriter{w: bufio.NewWriterSize(sink, 1<<20)}
	s.w.WriteString(snapshotMagic)
	s.u64(uint64(meta.streamCreated))
	s.u64(meta.seq)
	s.w.Write(meta.head[:])
	s.u64(meta.unsignedThrough)
	s.u64(uint64(len(entries)))
	s.u64(uint64(len(records)))
	lay := c.layout
	if lay == nil {
		s.u64(0)
	} else {
		s.u64(uint64(len(lay.ids)))
		s.u64(lay.idKey[0])
		s.u64(lay.idKey[1])
	}
	s.uvarint(uint64(len(ownerTab)))
	for _, o := range ownerTab {
		s.str(o)
	}
	s.uvarint(uint64(len(permTab)))
	for _, l := range permTab {
		s.uvarint(uint64(len(l)))
		for _, n := range l {
			s.str(n)
		}
	}
	parts := writeEntries(s, sink, entries, lay, owners, permLists)
	if lay != nil {
		var b [4 << 10]byte
		for ids := lay.ids; len(ids) > 0; {
			n := min(len(ids), len(b)/4)
			for j, v := range ids[:n] {
				binary.LittleEndian.PutUint32(b[4*j:], v)
			}
			s.w.Write(b[:4*n])
			ids = ids[n:]
		}
	}
	for _, k := range records {
		s.str(k.ID)
		s.str(k.Name)
		s.str(k.Owner)
		s.str(k.Hash)
		s.str(k.Hint)
		s.w.WriteByte(byte(k.Environment))
		s.uvarint(uint64(len(k.Permissions)))
		for _, n := range k.Permissions {
			s.str(n)
		}
		s.time(k.ExpiresAt)
		s.rateLimit(k.RateLimit)
		s.time(&k.CreatedAt)
		s.str(k.CreatedBy)
		s.time(k.RevokedAt)
		s.str(k.RevokedBy)
		s.str(k.RevokeReason)
		s.u64(k.Revision)
		s.str(k.RolledFrom)
		s.str(k.RolledTo)
		s.flag(k.Imported)
		s.str(string(k.Metadata))
		s.strs(k.AllowedIPs)
		s.flag(k.AdminScope != nil)
		if k.AdminScope != nil {
			s.str(k.AdminScope.Owner)
		}
		s.flag(k.Disabled)
		s.time(k.DisabledAt)
		s.str(k.DisabledBy)
		s.time(k.UpdatedAt)
		s.str(k.UpdatedBy)
		s.credits(k.Credits)
	}
	writeAccounts(s, c)
	s.uvarint(uint64(len(c.refused)))
	for _, seq := range c.refused {
		s.uvarint(seq)
	}
	s.w.Flush() // an error sticks: the last Flush returns it
	table := sink.n
	s.uvarint(uint64(len(parts)))
	for _, pt := range parts {
		s.uvarint(uint64(pt.n))
		s.uvarint(uint64(pt.end - pt.off))
		s.uvarint(pt.slots.lo)
		s.uvarint(pt.slots.hi)
		s.w.Write(pt.sum)
	}
	s.u64(uint64(table))
	if err := s.w.Flush(); err != nil {
		return "", err
	}
	if _, err := f.Write(sink.h.Sum(nil)); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	path := filepath.Join(dir, snapshotName(meta.seq))
	if err := os.Rename(f.Name(), path); err != nil {
		return "", err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // make the rename durable
		d.Close()
	}
	return path, nil
}

// snapSink is the file a snapshot is written to, with the running
// checksum of what is written (which writeEntries swaps for a part's own)
// and the count of bytes.
type snapSink struct {
	f io.Writer
	h hash.Hash
	n int
}

func (k *snapSink) Write(b []byte) (int, error) {
	n, err := k.f.Write(b)
	k.h.Write(b[:n])
	k.n += n
	return n, err
}

// snapPart is one run of entries in a snapshot: n entries from the
// first, in body[off:end], whose SHA-256 is sum.
type snapPart struct {
	first, n int
	off, end int
	slots    slotRange // with a layout
	sum      []byte
}

// partEntries is the entries of one part: parts are what the cores of a
// load share out, and 40 of them at ten million keys keep two cores
// busy to the end. (A variable for the tests' small tables.)
var partEntries = 1 << 18

// writeEntries writes the entries in parts of partEntries, each
// checksummed on its own (the file's checksum covers the part table that
// lists the parts' checksums instead of their bytes): the cores of a load
// each check and read their own parts.
func writeEntries(s *snapWriter, sink *snapSink, entries []*Entry, lay *layout, owners map[string]uint32, permLists map[uint32]uint32) []snapPart {
	var parts []snapPart
	for first := 0; first < len(entries); first += partEntries {
		s.w.Flush()
		outer := sink.h
		sink.h = sha256.New()
		pt := snapPart{first: first, n: min(partEntries, len(entries)-first), off: sink.n}
		next := uint32(0) // the slot after the previous entry's; a part starts at 0
		if lay != nil {
			pt.slots = slotRange{on: true, lo: uint64(lay.slots[first]), hi: uint64(lay.slots[first+pt.n-1])}
		}
		for i := first; i < first+pt.n; i++ {
			e := entries[i]
			if lay != nil {
				// Slots increase: each is written as its distance from
				// the one after the previous entry's (mostly a byte).
				s.uvarint(uint64(lay.slots[i] - next))
				next = lay.slots[i] + 1
			}
			s.w.Write(e.Hash[:])
			// An id of keyledger's form is its 16 bytes after a 0
			// (which no text's length is); another, its text.
			if x := e.Extra; x != nil && x.IDText != "" {
				s.str(x.IDText)
			} else {
				s.w.WriteByte(0)
				s.w.Write(e.id[:])
			}
			s.uvarint(uint64(owners[e.Owner]))
			s.uvarint(uint64(permLists[e.names]))
			flags := byte(e.Environment)
			if e.Revoked {
				flags |= 0x80
			}
			rl := e.RateLimit()
			if rl != nil {
				flags |= 0x40
			}
			if e.Imported {
				flags |= 0x20
			}
			if e.Disabled {
				flags |= 0x10
			}
			if e.Extra != nil {
				flags |= 0x08
			}
			s.w.WriteByte(flags)
			s.u64(uint64(e.ExpiresAt))
			if rl != nil {
				s.u64(math.Float64bits(rl.PerSecond))
				s.uvarint(uint64(rl.Burst))
			}
			s.uvarint(e.Rev)
			if x := e.Extra; x != nil {
				s.strs(x.AllowedIPs)
				s.str(string(x.Metadata))
				s.str(x.Scope)
				s.u64(uint64(x.RollCap))
				s.credits(x.Credits)
				if x.Credits != nil {
					s.uvarint(x.CreditsRev)
					s.u64(uint64(x.CreditsAt))
					s.str(x.CreditsKey)
				}
			}
		}
		s.w.Flush()
		pt.end, pt.sum = sink.n, sink.h.Sum(nil)
		sink.h = outer
		parts = append(parts, pt)
	}
	return parts
}

// writeAccounts writes the plans and owners by name and the revs by id:
// the same accounts make the same bytes.
func writeAccounts(s *snapWriter, c *snapshotCut) {
	plans := slices.SortedFunc(slices.Values(c.plans), func(a, b *keyledger.PlanRecord) int { return strings.Compare(a.Name, b.Name) })
	s.uvarint(uint64(len(plans)))
	for _, r := range plans {
		s.str(r.Name)
		s.u64(uint64(r.MonthlyQuota))
		s.rateLimit(r.RateLimit)
		s.str(r.OnOutage)
		s.uvarint(r.Revision)
		s.at(r.UpdatedAt)
		s.str(r.UpdatedBy)
	}
	owners := slices.SortedFunc(slices.Values(c.owners), func(a, b *keyledger.Owner) int { return strings.Compare(a.Name, b.Name) })
	s.uvarint(uint64(len(owners)))
	for _, o := range owners {
		s.str(o.Name)
		s.str(o.Plan)
		s.str(string(o.Metadata))
		s.uvarint(o.Revision)
		s.at(o.UpdatedAt)
		s.str(o.UpdatedBy)
	}
	ids := slices.Sorted(maps.Keys(c.revs))
	s.uvarint(uint64(len(ids)))
	for _, id := range ids {
		s.str(id)
		s.uvarint(c.revs[id])
	}
}

// pruneSnapshots keeps the newest keep snapshots in dir.
func pruneSnapshots(dir string, keep int) {
	names := listSnapshots(dir)
	for i := keep; i < len(names); i++ {
		os.Remove(filepath.Join(dir, names[i]))
	}
}

// listSnapshots returns snapshot file names, newest first.
func listSnapshots(dir string) []string {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, de := range des {
		if n := de.Name(); strings.HasPrefix(n, "snap-") && strings.HasSuffix(n, ".bin") {
			names = append(names, n)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	return names
}

type snapReader struct {
	b   []byte
	err error
}

func (r *snapReader) fail() {
	if r.err == nil {
		r.err = fmt.Errorf("%w: truncated", errSnapshot)
	}
	r.b = nil
}
func (r *snapReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}
func (r *snapReader) u64() uint64 {
	if len(r.b) < 8 {
		r.fail()
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}
func (r *snapReader) byte1() byte {
	if len(r.b) < 1 {
		r.fail()
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}
func (r *snapReader) str() string {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail()
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *snapReader) strs(max int) []string {
	n := r.uvarint()
	if n == 0 {
		return nil
	}
	out := make([]string, min(n, uint64(max)))
	for i := range out {
		out[i] = r.str()
	}
	return out
}
func (r *snapReader) time() *time.Time {
	v := r.u64()
	if v == 0 {
		return nil
	}
	t := time.Unix(0, int64(v)).UTC()
	return &t
}
func (r *snapReader) at() time.Time {
	if t := r.time(); t != nil {
		return *t
	}
	return time.Time{}
}
func (r *snapReader) rateLimit() *keyledger.RateLimit {
	if r.byte1() != 1 {
		return nil
	}
	return &keyledger.RateLimit{PerSecond: math.Float64frombits(r.u64()), Burst: int(r.uvarint())}
}

// credits reads what snapWriter.credits wrote.
func (r *snapReader) credits() *keyledger.Credits {
	kind := r.byte1()
	if kind == 0 {
		return nil
	}
	c := &keyledger.Credits{Remaining: int64(r.u64())}
	if kind == 2 {
		n := r.uvarint()
		if n > uint64(len(r.b)) {
			r.fail()
			return nil
		}
		// The two intervals there are, without a string per key.
		iv := r.b[:n]
		r.b = r.b[n:]
		c.Refill = &keyledger.Refill{Interval: refillInterval(iv), Amount: int64(r.u64())}
	}
	return c
}

func refillInterval(b []byte) string {
	switch string(b) {
	case keyledger.RefillDaily:
		return keyledger.RefillDaily
	case keyledger.RefillMonthly:
		return keyledger.RefillMonthly
	}
	return string(b)
}

// readAccounts reads what writeAccounts wrote; max bounds the counts (the
// body's length: a count past it is a damaged file, not an allocation).
func (r *snapReader) readAccounts(max uint64) *accounts {
	a := newAccounts()
	for n := min(r.uvarint(), max); n > 0 && r.err == nil; n-- {
		pr := &keyledger.PlanRecord{Plan: keyledger.Plan{Name: r.str(), MonthlyQuota: int64(r.u64())}}
		pr.RateLimit = r.rateLimit()
		pr.OnOutage = r.str()
		pr.Revision, pr.UpdatedAt, pr.UpdatedBy = r.uvarint(), r.at(), r.str()
		a.plans[pr.Name] = pr
	}
	for n := min(r.uvarint(), max); n > 0 && r.err == nil; n-- {
		o := &keyledger.Owner{Name: r.str(), Plan: r.str()}
		if m := r.str(); m != "" {
			o.Metadata = json.RawMessage(m)
		}
		o.Revision, o.UpdatedAt, o.UpdatedBy = r.uvarint(), r.at(), r.str()
		a.owners[o.Name] = o
	}
	for n := min(r.uvarint(), max); n > 0 && r.err == nil; n-- {
		id := r.str()
		a.revs[id] = r.uvarint()
	}
	return a
}

// loadSnapshot reads the snapshot at path into the (empty) projector and
// returns its metadata. The projector is left untouched on error.
func (p *Projector) loadSnapshot(path string, want snapshotMeta) (snapshotMeta, error) {
	// A load allocates what it keeps (and the file, freed after): a
	// collection meanwhile would mark the growing table again and again
	// and free nothing. At ten million keys that was most of the load's
	// CPU. Collections resume, with the process's setting, when it
	// returns; a memory limit (GOMEMLIMIT) is honoured throughout.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	data, unmap, err := mapFile(path)
	if err != nil {
		return snapshotMeta{}, err
	}
	// Everything kept from the file is copied out of it (strings, the
	// packed ids): after this, no byte of it is referred to.
	defer unmap()
	if len(data) < len(snapshotMagic)+sha256.Size || !knownMagic(string(data[:len(snapshotMagic)])) {
		return snapshotMeta{}, fmt.Errorf("%w: not a keyledger snapshot", errSnapshot)
	}
	version := string(data[:len(snapshotMagic)])
	if version != snapshotMagic && version != snapshotMagicV5 && version != snapshotMagicV4 {
		// See the version history at the top: its table may lack
		// plans, owners and credits.
		return snapshotMeta{}, fmt.Errorf("%w: format %s predates plans, owners and credits; replaying the stream", errSnapshot, version)
	}
	body, sum := data[:len(data)-sha256.Size], data[len(data)-sha256.Size:]
	r := &snapReader{b: body[len(snapshotMagic):]}
	meta := snapshotMeta{streamCreated: int64(r.u64()), seq: r.u64()}
	if len(r.b) < 32 {
		return snapshotMeta{}, fmt.Errorf("%w: truncated", errSnapshot)
	}
	copy(meta.head[:], r.b)
	r.b = r.b[32:]
	meta.unsignedThrough = r.u64()
	nEntries, nRecords := r.u64(), r.u64()
	var capacity uint64 // of the layout; 0: none (and none in version 4)
	var idKey [2]uint64
	if version != snapshotMagicV4 {
		if capacity = r.u64(); capacity > 0 {
			idKey = [2]uint64{r.u64(), r.u64()}
		}
	}
	// The id index takes 4 bytes a slot in the file, and a table has
	// more slots than entries.
	if nEntries > uint64(len(body))/minEntryBytes || nRecords > uint64(len(body)) ||
		capacity > uint64(len(body))/4 || capacity > 0 && capacity <= nEntries || capacity > math.MaxUint32 {
		return snapshotMeta{}, fmt.Errorf("%w: implausible counts", errSnapshot)
	}
	ownerTab := make([]string, min(r.uvarint(), uint64(len(body))))
	for i := range ownerTab {
		ownerTab[i] = r.str()
	}
	permTab := make([]uint32, min(r.uvarint(), uint64(len(body))))
	// Permission sets are computed against this node's catalog, once per
	// distinct list (the catalog may differ from the writer's).
	permMasks := make([]keyledger.Permissions, len(permTab))
	for i := range permTab {
		l := make([]string, min(r.uvarint(), uint64(len(body))))
		for j := range l {
			l[j] = r.str()
		}
		permTab[i], permMasks[i] = internNames(l), p.permMask(l)
	}
	// Room for the keys and for the tail still to replay, so the replay
	// after loading does not grow (copy) the table again.
	tail := uint64(0)
	if meta.seq < want.seq {
		tail = want.seq - meta.seq
	}
	// The layout is taken as it is when it has room for the tail too;
	// else the entries are placed (and their ids indexed) again, in a
	// table of the size they need.
	useLayout := capacity > 0 && capacity >= uint64(capacityFor(int(nEntries+tail)))
	var table *Table
	if useLayout {
		table = newTable(int(capacity), idKey)
	} else {
		table = NewTable(roomFor(int(nEntries + tail)))
	}
	d := table.data.Load()
	tabs := &entryTables{owners: ownerTab, names: permTab, perms: permMasks, max: len(body)}
	var imported int64
	var ok bool
	if version == snapshotMagic {
		var err error
		if imported, ok, err = p.readParts(r, body, sum, int(nEntries), tabs, table, d, capacity, useLayout); err != nil {
			return snapshotMeta{}, err
		}
	} else {
		entries := newEntries(int(nEntries))
		// Versions 4 and 5: one run of entries under the file's
		// checksum, which the other core checks while this one reads
		// the entries, then (without a layout) indexes their ids:
		// nothing read is used, nor any decision taken on the header,
		// before the checksum matched.
		ids := startIndexer(table, d, func() bool { got := sha256.Sum256(body); return bytes.Equal(got[:], sum) }, len(entries), !useLayout)
		defer ids.finish()
		place := func(slot uint64, e *Entry) { ids.add(table.placeSlot(d, e)) }
		if useLayout {
			place = d.fill
		}
		var err error
		if imported, err = r.readEntries(entries, false, slotRange{on: capacity > 0, hi: capacity - 1}, tabs, place); err != nil {
			return snapshotMeta{}, err
		}
		if r.err == nil {
			if err := r.readIDIndex(d, capacity, nEntries, useLayout); err != nil {
				return snapshotMeta{}, err
			}
		}
		ok = ids.finish()
	}
	table.n.Store(int64(nEntries))
	table.imported.Store(imported)
	if !ok {
		return snapshotMeta{}, fmt.Errorf("%w: checksum mismatch", errSnapshot)
	}
	if meta.unsignedThrough != want.unsignedThrough {
		return snapshotMeta{}, fmt.Errorf("%w: taken with --trust-unsigned-through %d, this node runs with %d", errSnapshot, meta.unsignedThrough, want.unsignedThrough)
	}
	if meta.streamCreated != want.streamCreated {
		return snapshotMeta{}, fmt.Errorf("%w: snapshot taken of another KEYS stream", errReplaced)
	}
	if meta.seq > want.seq {
		return snapshotMeta{}, fmt.Errorf("%w: the snapshot is ahead of the stream (snapshot at %d, stream at %d)", errReplaced, meta.seq, want.seq)
	}
	var records map[string]*keyledger.Key
	var ordered []*keyledger.Key // in file order, for the index
	if p.records != nil {
		records = make(map[string]*keyledger.Key, nRecords)
		ordered = make([]*keyledger.Key, 0, nRecords)
	}
	for i := uint64(0); i < nRecords && r.err == nil; i++ {
		k := &keyledger.Key{ID: r.str(), Name: r.str(), Owner: r.str(), Hash: r.str(), Hint: r.str()}
		k.Environment = keyledger.Environment(r.byte1())
		k.Permissions = make([]string, min(r.uvarint(), uint64(len(body))))
		for j := range k.Permissions {
			k.Permissions[j] = r.str()
		}
		k.ExpiresAt = r.time()
		k.RateLimit = r.rateLimit()
		k.CreatedAt = r.at()
		k.CreatedBy = r.str()
		k.RevokedAt = r.time()
		k.RevokedBy, k.RevokeReason = r.str(), r.str()
		k.Revision = r.u64()
		k.RolledFrom, k.RolledTo = r.str(), r.str()
		k.Imported = r.byte1() == 1
		if m := r.str(); m != "" {
			k.Metadata = json.RawMessage(m)
		}
		k.AllowedIPs = r.strs(len(body))
		if r.byte1() == 1 {
			k.AdminScope = &keyledger.AdminScope{Owner: r.str()}
		}
		k.Disabled = r.byte1() == 1
		k.DisabledAt, k.DisabledBy = r.time(), r.str()
		k.UpdatedAt, k.UpdatedBy = r.time(), r.str()
		k.Credits = r.credits()
		if records != nil {
			records[k.ID] = k
			ordered = append(ordered, k)
		}
	}
	var acc *accounts
	if r.err == nil {
		acc = r.readAccounts(uint64(len(body)))
	}
	var refused []uint64
	if r.err == nil {
		n := r.uvarint()
		if n > uint64(len(body)) || n > meta.seq {
			return snapshotMeta{}, fmt.Errorf("%w: bad refused count", errSnapshot)
		}
		refused = make([]uint64, 0, n)
		for range n {
			seq := r.uvarint()
			if seq == 0 || seq > meta.seq || len(refused) > 0 && seq <= refused[len(refused)-1] {
				return snapshotMeta{}, fmt.Errorf("%w: bad refused sequence", errSnapshot)
			}
			refused = append(refused, seq)
		}
	}
	if r.err != nil {
		return snapshotMeta{}, r.err
	}
	if len(r.b) != 0 {
		return snapshotMeta{}, fmt.Errorf("%w: trailing data", errSnapshot)
	}
	if p.records != nil && uint64(len(records)) != nEntries {
		// An admin node needs records for every key; a snapshot taken by a
		// verifier-only node has none.
		return snapshotMeta{}, fmt.Errorf("%w: has no key records", errSnapshot)
	}
	// Commit: the projector has not started applying yet.
	p.table.data.Store(table.data.Load())
	p.table.n.Store(table.n.Load())
	p.table.imported.Store(table.imported.Load())
	p.table.idKey = table.idKey
	for _, o := range ownerTab {
		p.owners[o] = o
	}
	if records != nil {
		// Records are written in index order (see cut), so this is a
		// pass over them; an older snapshot's are sorted here.
		byTime, byOwner := buildIndexes(ordered, p.intern)
		p.recMu.Lock()
		p.records, p.byTime, p.byOwner = records, byTime, byOwner
		p.recMu.Unlock()
	}
	for _, o := range acc.owners {
		// Like applyOwnerSet: an owner's record shares its name with
		// the owner's keys.
		o.Name = p.intern(o.Name)
	}
	p.refused.set(refused)
	a := p.accounts
	a.mu.Lock()
	a.plans, a.owners, a.revs = acc.plans, acc.owners, acc.revs
	a.mu.Unlock()
	if len(acc.plans)+len(acc.owners) > 0 {
		// The quota meter re-reads the accounts when gen moves.
		a.gen.Add(1)
	}
	return meta, nil
}

// minEntryBytes is the least an entry takes in a snapshot (hash, id
// length and one byte of id, owner, list, flags, expiry, rev): it bounds
// the entries a file of some size can claim, and so what reading a
// corrupt one allocates before its checksum is known.
const minEntryBytes = 32 + 1 + 1 + 1 + 1 + 1 + 8 + 1

// indexer is the snapshot load's second core: it checks the file's
// checksum (check), then indexes by id the entries the load has placed, in
// batches (the id index is the table's other half, and its writes land
// at random: done here, they cost the load nothing).
type indexer struct {
	batch   []uint32
	batches chan []uint32
	done    chan bool
	ok      bool
	closed  bool
}

const indexBatch = 1 << 14

func startIndexer(t *Table, d *tableData, check func() bool, n int, index bool) *indexer {
	if !index {
		n = 0
	}
	x := &indexer{batches: make(chan []uint32, n/indexBatch+2), done: make(chan bool, 1)}
	go func() {
		ok := check()
		for b := range x.batches {
			if ok {
				for _, s := range b {
					t.placeID(d, int(s))
				}
			}
		}
		x.done <- ok
	}()
	return x
}

// add queues the entry in slot s for the id index.
func (x *indexer) add(s int) {
	if x.batch == nil {
		x.batch = make([]uint32, 0, indexBatch)
	}
	x.batch = append(x.batch, uint32(s))
	if len(x.batch) == indexBatch {
		x.batches <- x.batch
		x.batch = nil
	}
}

// finish waits for the indexer and reports whether the checksum
// matched (then every entry added is indexed). It may be called again.
func (x *indexer) finish() bool {
	if !x.closed {
		x.closed = true
		if len(x.batch) > 0 {
			x.batches <- x.batch
		}
		close(x.batches)
		x.ok = <-x.done
	}
	return x.ok
}
