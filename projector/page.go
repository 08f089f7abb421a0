package projector

import (
	"encoding/base64"
	"encoding/binary"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// PageQuery selects one page of key records, newest first.
type PageQuery struct {
	Limit       int                   // 1..1000; 0 means 100
	Cursor      string                // "" for the first page; else a NextCursor from a previous page
	Owner       string                // exact; "" matches all
	Environment keyledger.Environment // EnvUnknown matches all
	Status      keyledger.Status      // "" matches all (statuses are computed at Now: see keyledger.Key.StatusAt)
	NamePrefix  string                // case-sensitive prefix of Name
	Hint        string                // exact Hint (last 4 characters of the secret)
	Now         time.Time             // zero means the projector's clock (Options.Now)
}

// Page is one page of records and the cursor of the next ("" when none).
type Page struct {
	Keys       []keyledger.Key
	NextCursor string
}

// The bounds of PageQuery.Limit.
const (
	DefaultPageLimit = 100
	MaxPageLimit     = 1000
)

// pageBatch is how many index entries Page examines per hold of the
// records' read lock. Between batches the apply goroutine may store
// records (a revocation waits for at most one batch, some tens of
// microseconds), and the scan resumes after the last entry it examined,
// found again by its place (positions move as keys are inserted).
const pageBatch = 1024

// Page returns one page. It copies only the records it returns.
//
// Keys are ordered newest first, by creation time and then by id, and a
// page starts right after the key its cursor names. A cursor is a place
// in that order rather than an offset, so paging is stable while keys are
// created: the pages from a first one visit every key that existed when
// it was read exactly once. Keys created meanwhile sort before the cursor
// and are not visited (one whose creation time is behind the cursor, as
// an admin node with a clock behind or an import may write, is). A cursor
// is not bound to the filters: it is valid with any.
//
// Cost: a page with no filter, or with only an owner filter (each owner
// has an index of its own), costs a binary search and copying the
// records it returns: 20 to 40 µs for 100 keys at a million keys
// (BenchmarkProjector_Page). Every other filter (environment, status,
// name prefix, hint) is tested on each key from the cursor on until
// Limit+1 keys match (the extra one tells whether there is a next page),
// so its cost depends on how rare matches are: about 30 ns per key
// examined, 80 to 140 µs for a page of 100 keys of a filter 1 % of keys
// match, and at worst, when too few keys match, a scan of every key after
// the cursor (of the owner's keys, with an owner filter): 30 to 45 ms per
// million keys. The scan never holds the apply goroutine back for more
// than pageBatch keys at a time.
//
// A Limit outside 0..1000, a cursor this API did not return, an unknown
// status or environment are errors of code keyledger.Invalid. Without
// Options.Records every page is empty.
func (p *Projector) Page(q PageQuery) (Page, error) {
	limit := q.Limit
	if limit < 0 || limit > MaxPageLimit {
		return Page{}, keyledger.Errorf(keyledger.Invalid, "limit must be between 1 and %d (0 means %d), not %d", MaxPageLimit, DefaultPageLimit, limit)
	}
	if limit == 0 {
		limit = DefaultPageLimit
	}
	from, resume, err := decodeCursor(q.Cursor)
	if err != nil {
		return Page{}, err
	}
	if q.Status != "" {
		if _, err := keyledger.ParseStatus(string(q.Status)); err != nil {
			return Page{}, err
		}
	}
	if q.Environment > keyledger.EnvTest {
		return Page{}, keyledger.Errorf(keyledger.Invalid, "environment must be live or test, not %d", q.Environment)
	}
	now := q.Now
	if now.IsZero() && q.Status != "" {
		now = p.now()
	}
	match := func(k *keyledger.Key) bool {
		return (q.Owner == "" || k.Owner == q.Owner) &&
			(q.Environment == keyledger.EnvUnknown || k.Environment == q.Environment) &&
			(q.Hint == "" || k.Hint == q.Hint) &&
			strings.HasPrefix(k.Name, q.NamePrefix) &&
			(q.Status == "" || k.StatusAt(now) == q.Status)
	}

	// One more than Limit: whether there is a next page. The records are
	// immutable (every change stores a copy), so the pointers collected
	// under the lock are copied after it.
	found := make([]*keyledger.Key, 0, min(limit+1, 64))
	for {
		p.recMu.RLock()
		x := p.byTime
		if q.Owner != "" {
			x = p.byOwner[q.Owner]
		}
		if x == nil {
			p.recMu.RUnlock()
			break
		}
		at := x.last()
		if resume {
			at = x.before(from)
		}
		for n := 0; at.c >= 0 && n < pageBatch && len(found) <= limit; n++ {
			k := x.at(at).k
			if match(k) {
				found = append(found, k)
			}
			from, resume = recordPlace(k), true
			at = x.prev(at)
		}
		p.recMu.RUnlock()
		if at.c < 0 || len(found) > limit {
			break
		}
	}

	page := Page{Keys: make([]keyledger.Key, min(len(found), limit))}
	for i := range page.Keys {
		page.Keys[i] = *found[i]
	}
	if len(found) > limit {
		page.NextCursor = encodeCursor(recordPlace(found[limit-1]))
	}
	return page, nil
}

// A cursor is base64url (unpadded) of a version byte (1), the creation
// time of the last key of its page (unix nanoseconds, 8 bytes big-endian)
// and that key's id.
const (
	cursorVersion = 1
	maxCursorID   = 256
)

func encodeCursor(e place) string {
	b := make([]byte, 9, 9+len(e.id))
	b[0] = cursorVersion
	binary.BigEndian.PutUint64(b[1:], uint64(e.at))
	return base64.RawURLEncoding.EncodeToString(append(b, e.id...))
}

// decodeCursor returns the place a cursor names; ok is false for "".
func decodeCursor(s string) (p place, ok bool, err error) {
	if s == "" {
		return place{}, false, nil
	}
	b, derr := base64.RawURLEncoding.DecodeString(s)
	if derr != nil || len(b) < 10 || len(b) > 9+maxCursorID || b[0] != cursorVersion {
		return place{}, false, keyledger.Errorf(keyledger.Invalid, "cursor is not one this API returned (pass the next_cursor of a previous page, or none for the first page)")
	}
	return place{at: int64(binary.BigEndian.Uint64(b[1:9])), id: string(b[9:])}, true, nil
}

// indexRecord adds a new record to the indexes. The caller holds recMu
// for writing; owner is the interned owner.
func (p *Projector) indexRecord(k *keyledger.Key, owner string) {
	e := indexEntry{at: k.CreatedAt.UnixNano(), k: k}
	p.byTime.insert(e)
	x := p.byOwner[owner]
	if x == nil {
		x = &keyIndex{}
		p.byOwner[owner] = x
	}
	x.insert(e)
}

// reindex points the indexes at k, the new record of a key they hold
// (neither its creation time nor its owner ever changes). The caller
// holds recMu for writing.
func (p *Projector) reindex(k *keyledger.Key) {
	x := p.byOwner[k.Owner]
	if !p.byTime.replace(k) || x == nil || !x.replace(k) {
		p.log.Error("projector: a key record is missing from the index; pages will show its previous state", "key_id", k.ID)
	}
}
