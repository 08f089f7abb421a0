// Package projector builds a node's verification table from the KEYS
// stream. It follows the stream from its first message (or from a
// snapshot) with an ordered consumer and applies each event to an
// in-memory table keyed by the hash of the secret, so a revocation is in
// effect on a node the moment the node receives it.
package projector

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math/bits"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/internal/hugepages"
	"github.com/keyledger/keyledger/quota"
	"golang.org/x/time/rate"
)

// Entry is what the verify path needs to know about one key. An entry in
// the table is never modified (but for its lazily made state): a
// revocation swaps in a revoked copy, so a reader holding an entry always
// sees a consistent one.
//
// The layout is the verify path's: everything a valid key's check reads
// is in the first 64 bytes (one cache line: at ten million keys the
// table is far larger than the CPU's caches, and each line is a trip to
// memory), and the whole entry is 112 bytes, so that the table stays
// under 150 bytes a key. Hence the id kept as 16 bytes rather than its
// 36 characters, and the permission names as a number.
type Entry struct {
	Hash        keyledger.Hash
	Environment keyledger.Environment
	Revoked     bool
	// Disabled keys are refused until enabled again.
	Disabled bool
	// Imported keys were issued elsewhere and may not have keyledger's
	// format.
	Imported bool
	names    uint32 // the permission names as issued: see internNames
	// Perms is the key's permission set over the node's catalog.
	Perms keyledger.Permissions
	// ExpiresAt is Unix nanoseconds; 0 means never.
	ExpiresAt int64
	// Extra is what few keys have (nil for most): a rate limit of
	// their own, metadata, an IP allowlist, an admin scope, a roll's
	// expiry cap, an id not of keyledger's form. (Kept out of line: each
	// pointer in Entry costs 8 bytes for every key of the table.)
	Extra *Extra

	// Below: what only some requests read.

	id    [16]byte // the id's 32 hex digits, when it is keyledger's "key_…" form
	Owner string   // interned: keys of one owner share the bytes
	// Rev is the stream sequence of the last event stored on the key's
	// subject (applied or not): a reversible event applies only if its
	// Prev is Rev. 0 means unknown (loaded from a version-2 snapshot),
	// and any Prev is then taken once.
	Rev  uint64
	lazy atomic.Pointer[entryState]
}

// entryState is what an entry makes on first use and keeps: its id as
// text, header values and meters (keys never used cost none of it).
type entryState struct {
	id      string
	meters  atomic.Pointer[Meters]
	headers atomic.Pointer[Headers]
}

// state returns the entry's lazily made state.
func (e *Entry) state() *entryState {
	if s := e.lazy.Load(); s != nil {
		return s
	}
	s := &entryState{id: e.idText()}
	if e.lazy.CompareAndSwap(nil, s) {
		return s
	}
	return e.lazy.Load()
}

// ID returns the key's id. The first call on an entry makes the text
// (and keeps it: a key's requests then allocate nothing for it).
func (e *Entry) ID() string {
	if x := e.Extra; x != nil && x.IDText != "" {
		return x.IDText
	}
	return e.state().id
}

// idText makes the id's text without keeping it (for the writer, which
// visits every entry and must not leave state behind on each).
func (e *Entry) idText() string {
	if x := e.Extra; x != nil && x.IDText != "" {
		return x.IDText
	}
	return string(e.appendID(make([]byte, 0, len(idPrefix)+2*len(e.id))))
}

// appendID appends the key's id to b.
func (e *Entry) appendID(b []byte) []byte {
	if x := e.Extra; x != nil && x.IDText != "" {
		return append(b, x.IDText...)
	}
	return hex.AppendEncode(append(b, idPrefix...), e.id[:])
}

// isID reports whether the entry's id is id, packed already (b, packed:
// packID's answer) so that a probe past several entries packs it once,
// and without making the entry's text.
func (e *Entry) isID(id string, b [16]byte, packed bool) bool {
	if x := e.Extra; x != nil && x.IDText != "" {
		return x.IDText == id
	}
	return packed && b == e.id
}

// idPrefix begins every id events.NewKeyID makes.
const idPrefix = "key_"

// packID returns the 16 bytes of an id of events.NewKeyID's form
// ("key_" and 32 lower-case hex digits); ok is false for any other id,
// which an entry then keeps as text (Extra.IDText). Only the lower-case
// form packs, so that unpacking gives back the same text.
func packID[T string | []byte](id T) (b [16]byte, ok bool) {
	if len(id) != len(idPrefix)+32 || string(id[:len(idPrefix)]) != idPrefix {
		return b, false
	}
	// A snapshot's load unpacks millions of ids: a table lookup per
	// digit, and one check of all of them at the end.
	var bad byte
	for i := range b {
		hi, lo := hexDigit[id[len(idPrefix)+2*i]], hexDigit[id[len(idPrefix)+2*i+1]]
		bad |= hi | lo
		b[i] = hi<<4 | lo&0xf
	}
	return b, bad&0xf0 == 0
}

// hexDigit is each byte's value as a lower-case hex digit; 0xff for any
// other byte.
var hexDigit = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c-'a') + 10
	}
	return t
}()

// setID gives e the id, which is never empty (events.ValidKeyID); an id
// that does not pack goes into x, the extra fields the caller is about
// to set (see Extra.orNil).
func (e *Entry) setID(id string, x *Extra) {
	if b, ok := packID(id); ok {
		e.id, x.IDText = b, ""
		return
	}
	e.id, x.IDText = [16]byte{}, id
}

// CreditsCounter names the fleet counter of the key's credits: the key
// whose balance it spends and the event that set the balance (a new
// balance is a new counter, so two keys of one lineage never write one
// counter with different balances).
func (e *Entry) CreditsCounter() string {
	x := e.Extra
	id := x.CreditsKey
	if id == "" {
		id = e.ID()
	}
	return id + "." + strconv.FormatUint(x.CreditsRev, 10)
}

// RateLimit returns the key's own limit; nil means the environment
// default.
func (e *Entry) RateLimit() *keyledger.RateLimit {
	if e.Extra == nil {
		return nil
	}
	return e.Extra.RateLimit
}

// MetaValues returns, for each of fields, the key's top-level metadata
// member of that name as text: a string as it is, a number or a boolean
// as JSON writes it, "" for anything else or nothing. It is made once
// per key, on first use (a node asks with one field list: the first
// answer is kept).
func (e *Entry) MetaValues(fields []string) []string {
	x := e.Extra
	if x == nil || len(x.Metadata) == 0 {
		return noMeta(len(fields))
	}
	if v := x.meta.Load(); v != nil {
		return *v
	}
	vals := make([]string, len(fields))
	if md := x.Metadata; len(md) > 0 {
		var obj map[string]json.RawMessage
		if json.Unmarshal(md, &obj) == nil {
			for i, f := range fields {
				raw, ok := obj[f]
				if !ok {
					continue
				}
				var s string
				switch {
				case json.Unmarshal(raw, &s) == nil:
					vals[i] = s
				case len(raw) > 0 && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9' || string(raw) == "true" || string(raw) == "false"):
					vals[i] = string(raw)
				}
			}
		}
	}
	x.meta.CompareAndSwap(nil, &vals)
	return *x.meta.Load()
}

// noMeta is the answer for keys without metadata: n empty values, shared.
func noMeta(n int) []string {
	if n <= len(emptyMeta) {
		return emptyMeta[:n]
	}
	return make([]string, n)
}

var emptyMeta [16]string

// Extra holds an entry's rarely set fields, so that keys without them
// pay one nil pointer.
type Extra struct {
	// RateLimit is the key's own limit (nil: the environment's default).
	RateLimit *keyledger.RateLimit
	// Allowlist is nil when every address may use the key; AllowedIPs
	// are its entries as written in the ledger.
	Allowlist  *keyledger.Allowlist
	AllowedIPs []string
	// Metadata is the key's compact JSON object (shared, never modified).
	Metadata []byte
	// Scope is the owner an admin key is limited to ("" for none).
	Scope string
	// RollCap is the expiry a roll gave the key (Unix ns): no update may
	// push the key's expiry past it. 0 for keys never rolled.
	RollCap int64
	// Credits is the key's balance as last set, by the event at
	// CreditsRev at CreditsAt (Unix ns): the fleet's counter of the
	// balance is named after that event, so that a new balance starts
	// a new count.
	Credits    *keyledger.Credits
	CreditsRev uint64
	CreditsAt  int64
	// CreditsKey is the key whose balance this one spends: a rolled key
	// spends its predecessor's (and the predecessor, in its grace
	// period, the same), so rolling never mints credits. "" is the
	// key's own.
	CreditsKey string
	// IDText is the key's id when it is not of keyledger's form (see
	// packID), else "".
	IDText string

	// meta caches MetaValues (the metadata is in here, and never
	// changes: an update makes a new Extra).
	meta atomic.Pointer[[]string]
}

func (x *Extra) empty() bool {
	return x == nil || x.RateLimit == nil && x.Allowlist == nil && len(x.Metadata) == 0 && x.Scope == "" && x.RollCap == 0 && x.Credits == nil && x.IDText == ""
}

// edit returns a copy of x's fields (of none when x is nil) to change,
// without its caches.
func (x *Extra) edit() *Extra {
	if x == nil {
		return &Extra{}
	}
	return &Extra{RateLimit: x.RateLimit, Allowlist: x.Allowlist, AllowedIPs: x.AllowedIPs, Metadata: x.Metadata, Scope: x.Scope, RollCap: x.RollCap,
		Credits: x.Credits, CreditsRev: x.CreditsRev, CreditsAt: x.CreditsAt, CreditsKey: x.CreditsKey, IDText: x.IDText}
}

// orNil returns x, or nil when it holds nothing.
func (x *Extra) orNil() *Extra {
	if x.empty() {
		return nil
	}
	return x
}

// Allowlist returns the key's allowlist (nil: any address).
func (e *Entry) Allowlist() *keyledger.Allowlist {
	if e.Extra == nil {
		return nil
	}
	return e.Extra.Allowlist
}

// Metadata returns the key's metadata (nil: none). Do not modify it.
func (e *Entry) Metadata() []byte {
	if e.Extra == nil {
		return nil
	}
	return e.Extra.Metadata
}

// Scope returns the owner an admin key is limited to, or "".
func (e *Entry) Scope() string {
	if e.Extra == nil {
		return ""
	}
	return e.Extra.Scope
}

// Permissions returns the permission names the key was issued with. The
// slice is shared: do not modify it.
func (e *Entry) Permissions() []string { return namesAt(e.names) }

// Meters returns the entry's meters, making them with mk on first use.
// Concurrent first uses agree on one.
func (e *Entry) Meters(mk func() *Meters) *Meters {
	st := e.state()
	if m := st.meters.Load(); m != nil {
		return m
	}
	m := mk()
	if st.meters.CompareAndSwap(nil, m) {
		return m
	}
	return st.meters.Load()
}

// Meters is what a verifier spends on a key's valid verifications: its
// node-local token bucket and its fleet-wide counters (see package
// quota). It is made on first use and kept with the entry: an update
// makes a new entry, hence new meters (the fleet counters, found again by
// name, keep their leases).
type Meters struct {
	Limiter *rate.Limiter  // nil: no rate limit
	Rate    *quota.Counter // the fleet-wide rate window; nil: none (or no fleet counters)
	Credits *quota.Counter // nil: no credits
	// OwnerQuota and OwnerRate are the counters of the key's owner's
	// plan as of the accounts' generation Gen (a plan or owner change
	// makes new meters: see SwapMeters).
	OwnerQuota, OwnerRate *quota.Counter
	Gen                   uint64
}

// SwapMeters replaces the entry's meters old with m, unless another
// request did first; it returns the entry's meters after.
func (e *Entry) SwapMeters(old, m *Meters) *Meters {
	st := e.state()
	if st.meters.CompareAndSwap(old, m) {
		return m
	}
	return st.meters.Load()
}

// Headers are an entry's forward-auth response header values, made once
// per key on first use so that answering 200 allocates nothing after that
// (and keys never used cost no memory for them).
type Headers struct {
	ID, Owner, Environment []string
}

// Headers returns the entry's header values.
func (e *Entry) Headers() *Headers {
	st := e.state()
	if h := st.headers.Load(); h != nil {
		return h
	}
	h := &Headers{ID: []string{st.id}, Owner: []string{e.Owner}, Environment: []string{e.Environment.String()}}
	if st.headers.CompareAndSwap(nil, h) {
		return h
	}
	return st.headers.Load()
}

// revokedCopy returns a revoked copy of e (fields copied one by one: the
// atomics must not be).
func (e *Entry) revokedCopy() *Entry {
	c := e.clone()
	c.Revoked = true
	return c
}

// clone copies e but for its lazily made state.
func (e *Entry) clone() *Entry {
	return &Entry{Hash: e.Hash, id: e.id, Owner: e.Owner, Environment: e.Environment, Revoked: e.Revoked,
		Imported: e.Imported, Perms: e.Perms, ExpiresAt: e.ExpiresAt, names: e.names,
		Disabled: e.Disabled, Rev: e.Rev, Extra: e.Extra}
}

// Table maps secret hashes to entries. Lookups take no lock at all: the
// table is an open-addressing array of slots, written by one goroutine
// (the projector) and read by any number. Entries are only ever added or
// replaced, never removed (revoked keys stay as tombstones), so a probe
// sequence never breaks under a concurrent write. Growing builds a new
// array and swaps it in atomically.
//
// A slot holds, beside its entry, a tag: 8 more bytes of the secret's
// hash. A probe passes the slots of other keys on the tags alone, in the
// array's own cache lines, and reaches into an entry (another trip to
// memory, in a large table) only for the key it is after.
//
// Two arrays index the entries: slots by the secret's hash (the verify
// path), and ids by key id (revocations), which stores slot numbers only.
type Table struct {
	data     atomic.Pointer[tableData]
	n        atomic.Int64
	imported atomic.Int64 // entries with Imported set
	// idKey keys the id index's hash (see idHash). A snapshot stores it
	// with the index, which a load then takes as it is.
	idKey [2]uint64
}

// HasImported reports whether any key was imported: only then must a
// verifier look up keys that do not have keyledger's format.
func (t *Table) HasImported() bool { return t.imported.Load() > 0 }

type tableData struct {
	slots []slot
	ids   []uint32 // slot index + 1; 0 is empty. Written and read by the writer only.
}

// slot is one place of the table. The writer stores the tag before the
// entry, so a reader that sees an entry sees its tag.
type slot struct {
	tag atomic.Uint64
	e   atomic.Pointer[Entry]
}

// hashTag is the tag of a hash: the 8 bytes after the ones that place it.
func hashTag(h *keyledger.Hash) uint64 { return binary.LittleEndian.Uint64(h[8:16]) }

// maxLoad is the load factor at which the table grows (by half). The tags
// keep probing cheap at this load, and between growths the table's slots
// and ids cost 25–38 bytes a key.
const maxLoad = 0.8

// NewTable returns an empty table sized for about n keys.
func NewTable(n int) *Table {
	return newTable(capacityFor(n), newIDKey())
}

// newTable returns an empty table of the given capacity whose id index
// is keyed with key (a snapshot's layout fills one of its own key).
func newTable(capacity int, key [2]uint64) *Table {
	t := &Table{idKey: key}
	t.data.Store(newTableData(capacity))
	return t
}

// newIDKey draws a key for the id index's hash.
func newIDKey() (k [2]uint64) {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return [2]uint64{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}
}

func capacityFor(n int) int {
	return max(64, int(float64(n)/maxLoad)+1)
}

func newTableData(capacity int) *tableData {
	d := &tableData{slots: make([]slot, capacity), ids: make([]uint32, capacity)}
	// Both arrays are reached at random (the ids by the replay's every
	// event: a new key's id is checked, a revocation finds its key).
	hugepages.Slice(d.slots)
	hugepages.Slice(d.ids)
	return d
}

// index maps a 64-bit hash onto [0, n) without a division (Lemire's
// multiply-shift), so capacities need not be powers of two.
func index(h uint64, n int) int {
	hi, _ := bits.Mul64(h, uint64(n))
	return int(hi)
}

// Lookup returns the entry for a hash, or nil.
func (t *Table) Lookup(h *keyledger.Hash) *Entry {
	d := t.data.Load()
	n := len(d.slots)
	// The hash is SHA-256 output: its first 8 bytes are already uniform.
	i := index(binary.LittleEndian.Uint64(h[:8]), n)
	tag := hashTag(h)
	for {
		s := &d.slots[i]
		e := s.e.Load()
		if e == nil || s.tag.Load() == tag && e.Hash == *h {
			return e
		}
		if i++; i == n {
			i = 0
		}
	}
}

// Len returns the number of entries, revoked ones included.
func (t *Table) Len() int { return int(t.n.Load()) }

// entryIDHash places an entry in the ids array: its id's 16 bytes when
// the id packs (see packID), else its text, as byID hashes an id.
func (t *Table) entryIDHash(e *Entry) uint64 {
	if x := e.Extra; x != nil && x.IDText != "" {
		return t.idHashText(x.IDText)
	}
	return t.idHash(&e.id)
}

// idHash is the id index's hash of a packed id. It is keyed, so that ids
// chosen to collide (an import names its keys' ids) cannot be placed on
// one long probe sequence without the key, and the key is two numbers a
// snapshot can store beside the index it wrote (hash/maphash's seed
// cannot be stored). The mixing is wyhash's multiply-fold, which is also
// hash/maphash's own where the CPU lacks AES.
func (t *Table) idHash(b *[16]byte) uint64 {
	k := &t.idKey
	return mum(mum(binary.LittleEndian.Uint64(b[:8])^k[0], binary.LittleEndian.Uint64(b[8:])^k[1])^16, k[0]^mixC)
}

// idHashText is idHash for an id kept as text.
func (t *Table) idHashText(id string) uint64 {
	k := &t.idKey
	h := k[1] ^ uint64(len(id))
	for ; len(id) > 0; id = id[min(16, len(id)):] {
		var b [16]byte
		copy(b[:], id)
		h = mum(binary.LittleEndian.Uint64(b[:8])^k[0]^h, binary.LittleEndian.Uint64(b[8:])^k[1])
	}
	return mum(h^k[0], mixC)
}

// mixC is an odd constant with bits spread evenly (wyhash's first).
const mixC = 0xa0761d6478bd642f

// mum is the high and low halves of a×b folded together.
func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// byID returns the slot of the entry with key id, or -1. Writer only.
func (t *Table) byID(d *tableData, id string) int {
	n := len(d.ids)
	// Packed once for the whole probe, hashed as entryIDHash does.
	b, packed := packID(id)
	var h uint64
	if packed {
		h = t.idHash(&b)
	} else {
		h = t.idHashText(id)
	}
	for i := index(h, n); ; {
		s := d.ids[i]
		if s == 0 {
			return -1
		}
		// An index loaded from a snapshot is taken as it is (the
		// checksum vouches for it); a slot it names is never empty in
		// a table this package wrote, and a nil is a miss all the same.
		if e := d.slots[s-1].e.Load(); e != nil && e.isID(id, b, packed) {
			return int(s - 1)
		}
		if i++; i == n {
			i = 0
		}
	}
}

// ByID returns the entry with key id, or nil. It may only be called by the
// table's writer (the projector's apply goroutine).
func (t *Table) ByID(id string) *Entry {
	d := t.data.Load()
	if s := t.byID(d, id); s >= 0 {
		return d.slots[s].e.Load()
	}
	return nil
}

// insert adds a new entry; the caller has checked that neither its hash
// nor its id is present. Writer only.
func (t *Table) insert(e *Entry) {
	d := t.data.Load()
	if float64(t.n.Load()+1) > maxLoad*float64(len(d.slots)) {
		d = t.grow(d, len(d.slots)+len(d.slots)/2)
	}
	t.place(d, e)
	t.n.Add(1)
	if e.Imported {
		t.imported.Add(1)
	}
}

// place puts e into d's first free slot along its probe sequence and
// indexes its id.
func (t *Table) place(d *tableData, e *Entry) {
	t.placeID(d, t.placeSlot(d, e))
}

// placeSlot puts e into d's first free slot along its probe sequence and
// returns the slot, which placeID must then index.
func (t *Table) placeSlot(d *tableData, e *Entry) int {
	n := len(d.slots)
	i := index(binary.LittleEndian.Uint64(e.Hash[:8]), n)
	for d.slots[i].e.Load() != nil {
		if i++; i == n {
			i = 0
		}
	}
	d.slots[i].tag.Store(hashTag(&e.Hash))
	d.slots[i].e.Store(e)
	return i
}

// placeID indexes by id the entry in slot s.
func (t *Table) placeID(d *tableData, s int) {
	n := len(d.ids)
	j := index(t.entryIDHash(d.slots[s].e.Load()), n)
	for d.ids[j] != 0 {
		if j++; j == n {
			j = 0
		}
	}
	d.ids[j] = uint32(s + 1)
}

// grow rehashes every entry into a table of the given capacity and swaps it
// in. Readers still probing the old array finish there: they began before
// any write that follows the swap.
func (t *Table) grow(old *tableData, capacity int) *tableData {
	d := newTableData(capacity)
	for i := range old.slots {
		if e := old.slots[i].e.Load(); e != nil {
			t.place(d, e)
		}
	}
	t.data.Store(d)
	return d
}

// reserve grows the table to hold n keys without further growth, when it
// cannot, with room for an eighth more (see roomFor). Writer only.
func (t *Table) reserve(n int) {
	if d := t.data.Load(); capacityFor(n) > len(d.slots) {
		t.grow(d, capacityFor(roomFor(n)))
	}
}

// roomFor is what a table sized at once for n keys makes room for: an
// eighth more (3 bytes a key). Sized for exactly n, the table of a node
// that replayed the ledger was full to its growth point, and so were its
// snapshots' layouts, which a load then had to place again for the
// shortest tail (1.4–2.8 s at ten million keys, against 0.6 s).
func roomFor(n int) int { return n + n/8 }

// replace swaps the entry in slot s for e (same hash and id). Writer only.
func (t *Table) replace(s int, e *Entry) {
	t.data.Load().slots[s].e.Store(e)
}

// layout is where a table keeps its entries, for a snapshot to store so
// that a load need not place them again: each entry's slot (in Range's
// order, increasing) and the id index, one number a slot (so its length
// is the capacity).
type layout struct {
	idKey [2]uint64
	slots []uint32
	ids   []uint32
}

// cutLayout returns the table's entries in slot order and their layout
// (the id index copied). Writer only: nothing may change the table
// meanwhile.
func (t *Table) cutLayout() ([]*Entry, *layout) {
	d := t.data.Load()
	l := &layout{idKey: t.idKey, slots: make([]uint32, 0, t.Len()), ids: slices.Clone(d.ids)}
	entries := make([]*Entry, 0, t.Len())
	for i := range d.slots {
		if e := d.slots[i].e.Load(); e != nil {
			entries = append(entries, e)
			l.slots = append(l.slots, uint32(i))
		}
	}
	return entries, l
}

// fill stores e into slot s of a table no reader sees yet (a snapshot's
// layout names the slot).
func (d *tableData) fill(s uint64, e *Entry) { d.slots[s].init(hashTag(&e.Hash), e) }

// init fills an empty slot of a table no reader can see yet (a load's,
// published afterwards by an atomic store of the table): plain stores,
// which the CPU streams to memory, where an atomic store waits for each.
func (s *slot) init(tag uint64, e *Entry) {
	*(*uint64)(unsafe.Pointer(&s.tag)) = tag
	*(*unsafe.Pointer)(unsafe.Pointer(&s.e)) = unsafe.Pointer(e)
}

// Range calls f for every entry, in no particular order, until f returns
// false. It may run concurrently with writes and then sees some of them.
func (t *Table) Range(f func(*Entry) bool) {
	d := t.data.Load()
	for i := range d.slots {
		if e := d.slots[i].e.Load(); e != nil && !f(e) {
			return
		}
	}
}

// Digest returns a SHA-256 over the table's contents (hash, id, revoked,
// expiry, permissions) in hash order. Two nodes that applied the same
// events have the same digest.
func (t *Table) Digest() [32]byte {
	var rows []*Entry
	t.Range(func(e *Entry) bool { rows = append(rows, e); return true })
	sort.Slice(rows, func(i, j int) bool { return string(rows[i].Hash[:]) < string(rows[j].Hash[:]) })
	d := sha256.New()
	var buf [8]byte
	idBuf := make([]byte, 0, 64)
	for _, e := range rows {
		d.Write(e.Hash[:])
		d.Write(e.appendID(idBuf[:0]))
		if e.Revoked {
			d.Write([]byte{1})
		} else {
			d.Write([]byte{0})
		}
		binary.BigEndian.PutUint64(buf[:], uint64(e.ExpiresAt))
		d.Write(buf[:])
		binary.BigEndian.PutUint64(buf[:], uint64(e.Perms))
		d.Write(buf[:])
	}
	var out [32]byte
	copy(out[:], d.Sum(nil))
	return out
}

// The permission lists keys were issued with, each kept once for the
// whole process and named by its number in Entry: there are few distinct
// lists, and a number costs an entry half a pointer. Lists are only ever
// added; readers take the published slice without a lock (an entry's
// number was published before the entry).
var (
	namesMu   sync.Mutex
	namesNum  = map[string]uint32{"": 0}
	namesList atomic.Pointer[[][]string]
)

func init() { namesList.Store(&[][]string{nil}) }

// internNames returns the number of a permission list (0 for none).
func internNames(names []string) uint32 {
	if len(names) == 0 {
		return 0
	}
	k := strings.Join(names, "\x00")
	namesMu.Lock()
	defer namesMu.Unlock()
	if n, ok := namesNum[k]; ok {
		return n
	}
	old := *namesList.Load()
	// A new slice each time, so that a reader's slice never changes
	// under it (lists are few: the copies cost nothing that matters).
	l := append(make([][]string, 0, len(old)+1), old...)
	l = append(l, append([]string(nil), names...))
	n := uint32(len(l) - 1)
	namesList.Store(&l)
	namesNum[k] = n
	return n
}

// namesAt returns list n (shared: do not modify it).
func namesAt(n uint32) []string {
	if l := *namesList.Load(); int(n) < len(l) {
		return l[n]
	}
	return nil
}

// entrySlab hands out the entries of new keys from large arrays rather
// than one allocation each: a table of millions of keys then sits in a
// few hundred arrays the kernel can back with huge pages (see
// hugepages.Advise), which a lookup at random reaches with fewer TLB misses,
// and each entry costs its 112 bytes with no allocator rounding. A key's
// changed entries are allocated on their own: an entry replaced in the
// table stays unused in its slab (the slab lives while any of its
// entries does), so the waste is bounded by one entry per key.
type entrySlab struct {
	free []Entry
	last int // the length of the newest slab
}

// slabMax is the largest slab: 8 MiB, so that the advice covers most of
// it whatever its alignment.
const slabMax = 8 << 20 / int(unsafe.Sizeof(Entry{}))

func (s *entrySlab) alloc() *Entry {
	if len(s.free) == 0 {
		// Slabs grow with the table (small projectors in tests stay
		// small), doubling up to slabMax.
		n := min(max(64, 2*s.last), slabMax)
		s.free, s.last = make([]Entry, n), n
		hugepages.Slice(s.free)
	}
	e := &s.free[0]
	s.free = s.free[1:]
	return e
}
