// Package projector builds a node's verification table from the KEYS
// stream. It follows the stream from its first message with an ordered
// consumer and applies each event to an in-memory table keyed by the hash
// of the secret, so a revocation is in effect on a node the moment the node
// receives it.
package projector

import (
	"crypto/sha256"
	"encoding/binary"
	"sort"
	"sync"
	"sync/atomic"

	keyledger "github.com/keyledger/keyledger"
	"golang.org/x/time/rate"
)

// Entry is what the verify path needs to know about one key. Entries are
// never modified once in the table: a revocation swaps in a revoked copy, so
// a reader holding an entry always sees a consistent one.
type Entry struct {
	ID          string
	Owner       string
	Environment keyledger.Environment
	Revoked     bool
	// Perms is the key's permission set over the node's catalog.
	Perms keyledger.Permissions
	// Permissions are the names as issued, for responses.
	Permissions []string
	// ExpiresAt is Unix nanoseconds; 0 means never.
	ExpiresAt int64
	// RateLimit is the key's own limit; nil means the environment default.
	RateLimit *keyledger.RateLimit
	// Header values preallocated for forward-auth responses, so that
	// answering 200 allocates nothing.
	IDHeader, OwnerHeader, EnvHeader []string

	// limiter is the key's token bucket, made on first use by the verifier
	// and carried across the entry's replacement.
	limiter *atomic.Pointer[rate.Limiter]
}

// Limiter returns the entry's token bucket, creating it with mk on first
// use. Concurrent first uses agree on one bucket.
func (e *Entry) Limiter(mk func() *rate.Limiter) *rate.Limiter {
	if l := e.limiter.Load(); l != nil {
		return l
	}
	l := mk()
	if e.limiter.CompareAndSwap(nil, l) {
		return l
	}
	return e.limiter.Load()
}

// numShards spreads readers over many locks: a verify takes the read lock of
// one shard picked by the (uniformly random) hash, so concurrent requests
// almost never touch the same cache line, and the single writer holds one
// shard at a time.
const numShards = 256

type shard struct {
	mu sync.RWMutex
	m  map[keyledger.Hash]*Entry
	_  [64 - 8]byte // keep neighbouring shards' locks off one cache line
}

// Table maps secret hashes to entries. Lookups from any number of
// goroutines run concurrently with the projector's writes.
type Table struct {
	shards [numShards]shard
	n      atomic.Int64
}

// NewTable returns an empty table.
func NewTable() *Table {
	t := &Table{}
	for i := range t.shards {
		t.shards[i].m = make(map[keyledger.Hash]*Entry)
	}
	return t
}

// Lookup returns the entry for a hash, or nil.
func (t *Table) Lookup(h *keyledger.Hash) *Entry {
	s := &t.shards[h[0]]
	s.mu.RLock()
	e := s.m[*h]
	s.mu.RUnlock()
	return e
}

// Len returns the number of entries, revoked ones included.
func (t *Table) Len() int { return int(t.n.Load()) }

func (t *Table) put(h keyledger.Hash, e *Entry) {
	s := &t.shards[h[0]]
	s.mu.Lock()
	if _, ok := s.m[h]; !ok {
		t.n.Add(1)
	}
	s.m[h] = e
	s.mu.Unlock()
}

// Digest returns a SHA-256 over the table's contents (hash, id, revoked,
// expiry, permissions) in hash order. Two nodes that applied the same
// events have the same digest.
func (t *Table) Digest() [32]byte {
	type row struct {
		h keyledger.Hash
		e *Entry
	}
	var rows []row
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for h, e := range s.m {
			rows = append(rows, row{h, e})
		}
		s.mu.RUnlock()
	}
	sort.Slice(rows, func(i, j int) bool {
		a, b := rows[i].h, rows[j].h
		return string(a[:]) < string(b[:])
	})
	d := sha256.New()
	var buf [8]byte
	for _, r := range rows {
		d.Write(r.h[:])
		d.Write([]byte(r.e.ID))
		if r.e.Revoked {
			d.Write([]byte{1})
		} else {
			d.Write([]byte{0})
		}
		binary.BigEndian.PutUint64(buf[:], uint64(r.e.ExpiresAt))
		d.Write(buf[:])
		binary.BigEndian.PutUint64(buf[:], uint64(r.e.Perms))
		d.Write(buf[:])
	}
	var out [32]byte
	copy(out[:], d.Sum(nil))
	return out
}
