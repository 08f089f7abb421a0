// Package projector builds a node's verification table from the KEYS
// stream. It follows the stream from its first message (or from a
// snapshot) with an ordered consumer and applies each event to an
// in-memory table keyed by the hash of the secret, so a revocation is in
// effect on a node the moment the node receives it.
package projector

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"hash/maphash"
	"math/bits"
	"sort"
	"strconv"
	"sync/atomic"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/quota"
	"golang.org/x/time/rate"
)

// Entry is what the verify path needs to know about one key. An entry in
// the table is never modified (but for its lazily made meters and
// header values): a revocation swaps in a revoked copy, so a reader holding
// an entry always sees a consistent one.
type Entry struct {
	Hash        keyledger.Hash
	ID          string
	Owner       string // interned: keys of one owner share the bytes
	Environment keyledger.Environment
	Revoked     bool
	// Imported keys were issued elsewhere and may not have keyledger's
	// format.
	Imported bool
	// Perms is the key's permission set over the node's catalog.
	Perms keyledger.Permissions
	// ExpiresAt is Unix nanoseconds; 0 means never.
	ExpiresAt int64
	// Disabled keys are refused until enabled again.
	Disabled bool
	// Rev is the stream sequence of the last event stored on the key's
	// subject (applied or not): a reversible event applies only if its
	// Prev is Rev. 0 means unknown (loaded from a version-2 snapshot),
	// and any Prev is then taken once.
	Rev uint64
	// Extra is what few keys have (nil for most): a rate limit of
	// their own, metadata, an IP allowlist, an admin scope, a roll's
	// expiry cap. (Kept out of line: each pointer in Entry costs 8 bytes
	// for every key of the table.)
	Extra *Extra

	names   *[]string // permission names as issued, interned per distinct list
	meters  atomic.Pointer[Meters]
	headers atomic.Pointer[Headers]
}

// CreditsCounter names the fleet counter of the key's credits: the key
// whose balance it spends and the event that set the balance (a new
// balance is a new counter, so two keys of one lineage never write one
// counter with different balances).
func (e *Entry) CreditsCounter() string {
	x := e.Extra
	id := x.CreditsKey
	if id == "" {
		id = e.ID
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

	// meta caches MetaValues (the metadata is in here, and never
	// changes: an update makes a new Extra).
	meta atomic.Pointer[[]string]
}

func (x *Extra) empty() bool {
	return x == nil || x.RateLimit == nil && x.Allowlist == nil && len(x.Metadata) == 0 && x.Scope == "" && x.RollCap == 0 && x.Credits == nil
}

// edit returns a copy of x's fields (of none when x is nil) to change,
// without its caches.
func (x *Extra) edit() *Extra {
	if x == nil {
		return &Extra{}
	}
	return &Extra{RateLimit: x.RateLimit, Allowlist: x.Allowlist, AllowedIPs: x.AllowedIPs, Metadata: x.Metadata, Scope: x.Scope, RollCap: x.RollCap,
		Credits: x.Credits, CreditsRev: x.CreditsRev, CreditsAt: x.CreditsAt, CreditsKey: x.CreditsKey}
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
func (e *Entry) Permissions() []string {
	if e.names == nil {
		return nil
	}
	return *e.names
}

// Meters returns the entry's meters, making them with mk on first use.
// Concurrent first uses agree on one.
func (e *Entry) Meters(mk func() *Meters) *Meters {
	if m := e.meters.Load(); m != nil {
		return m
	}
	m := mk()
	if e.meters.CompareAndSwap(nil, m) {
		return m
	}
	return e.meters.Load()
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
	if e.meters.CompareAndSwap(old, m) {
		return m
	}
	return e.meters.Load()
}

// Headers are an entry's forward-auth response header values, made once
// per key on first use so that answering 200 allocates nothing after that
// (and keys never used cost no memory for them).
type Headers struct {
	ID, Owner, Environment []string
}

// Headers returns the entry's header values.
func (e *Entry) Headers() *Headers {
	if h := e.headers.Load(); h != nil {
		return h
	}
	h := &Headers{ID: []string{e.ID}, Owner: []string{e.Owner}, Environment: []string{e.Environment.String()}}
	if e.headers.CompareAndSwap(nil, h) {
		return h
	}
	return e.headers.Load()
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
	return &Entry{Hash: e.Hash, ID: e.ID, Owner: e.Owner, Environment: e.Environment, Revoked: e.Revoked,
		Imported: e.Imported, Perms: e.Perms, ExpiresAt: e.ExpiresAt, names: e.names,
		Disabled: e.Disabled, Rev: e.Rev, Extra: e.Extra}
}

// Table maps secret hashes to entries. Lookups take no lock at all: the
// table is an open-addressing array of atomic pointers, written by one
// goroutine (the projector) and read by any number. Entries are only ever
// added or replaced, never removed (revoked keys stay as tombstones), so a
// probe sequence never breaks under a concurrent write. Growing builds a
// new array and swaps it in atomically.
//
// Two arrays index the entries: slots by the secret's hash (the verify
// path), and ids by key id (revocations), which stores slot numbers only.
type Table struct {
	data     atomic.Pointer[tableData]
	n        atomic.Int64
	imported atomic.Int64 // entries with Imported set
	seed     maphash.Seed
}

// HasImported reports whether any key was imported: only then must a
// verifier look up keys that do not have keyledger's format.
func (t *Table) HasImported() bool { return t.imported.Load() > 0 }

type tableData struct {
	slots []atomic.Pointer[Entry]
	ids   []uint32 // slot index + 1; 0 is empty. Written and read by the writer only.
}

// maxLoad is the load factor at which the table grows (by half): linear
// probing stays short below it, and at most a quarter of the slots are
// empty, which keeps the table near 200 bytes a key at a million keys.
const maxLoad = 0.75

// NewTable returns an empty table sized for about n keys.
func NewTable(n int) *Table {
	t := &Table{seed: maphash.MakeSeed()}
	t.data.Store(newTableData(capacityFor(n)))
	return t
}

func capacityFor(n int) int {
	return max(64, int(float64(n)/maxLoad)+1)
}

func newTableData(capacity int) *tableData {
	return &tableData{slots: make([]atomic.Pointer[Entry], capacity), ids: make([]uint32, capacity)}
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
	for {
		e := d.slots[i].Load()
		if e == nil || e.Hash == *h {
			return e
		}
		if i++; i == n {
			i = 0
		}
	}
}

// Len returns the number of entries, revoked ones included.
func (t *Table) Len() int { return int(t.n.Load()) }

// byID returns the slot of the entry with key id, or -1. Writer only.
func (t *Table) byID(d *tableData, id string) int {
	n := len(d.ids)
	for i := index(maphash.String(t.seed, id), n); ; {
		s := d.ids[i]
		if s == 0 {
			return -1
		}
		if d.slots[s-1].Load().ID == id {
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
		return d.slots[s].Load()
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
	n := len(d.slots)
	i := index(binary.LittleEndian.Uint64(e.Hash[:8]), n)
	for d.slots[i].Load() != nil {
		if i++; i == n {
			i = 0
		}
	}
	d.slots[i].Store(e)
	j := index(maphash.String(t.seed, e.ID), n)
	for d.ids[j] != 0 {
		if j++; j == n {
			j = 0
		}
	}
	d.ids[j] = uint32(i + 1)
}

// grow rehashes every entry into a table of the given capacity and swaps it
// in. Readers still probing the old array finish there: they began before
// any write that follows the swap.
func (t *Table) grow(old *tableData, capacity int) *tableData {
	d := newTableData(capacity)
	for i := range old.slots {
		if e := old.slots[i].Load(); e != nil {
			t.place(d, e)
		}
	}
	t.data.Store(d)
	return d
}

// reserve grows the table to hold n keys without further growth. Writer
// only.
func (t *Table) reserve(n int) {
	if d := t.data.Load(); capacityFor(n) > len(d.slots) {
		t.grow(d, capacityFor(n))
	}
}

// replace swaps the entry in slot s for e (same hash and id). Writer only.
func (t *Table) replace(s int, e *Entry) {
	t.data.Load().slots[s].Store(e)
}

// Range calls f for every entry, in no particular order, until f returns
// false. It may run concurrently with writes and then sees some of them.
func (t *Table) Range(f func(*Entry) bool) {
	d := t.data.Load()
	for i := range d.slots {
		if e := d.slots[i].Load(); e != nil && !f(e) {
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
	for _, e := range rows {
		d.Write(e.Hash[:])
		d.Write([]byte(e.ID))
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
