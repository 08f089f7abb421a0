package projector

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
)

// changer applies signed events to a projector in stream order, the way
// the stream would deliver them, with the sequence of each key's last
// event as the Prev of the next reversible one.
type changer struct {
	t      *testing.T
	p      *Projector
	signer *eventstest.Signer
	ids    *eventstest.IDs
	seq    uint64
	last   map[string]uint64
}

func newChanger(t *testing.T, opts Options) *changer {
	signer := eventstest.MustSigner(t, "admin-test", 1)
	opts.Keyring = eventstest.Keyring(t, signer)
	return &changer{t: t, p: New(nil, opts), signer: signer, ids: eventstest.NewIDs(3), last: map[string]uint64{}}
}

// put appends the exact bytes at the next sequence.
func (c *changer) put(keyID string, data []byte) uint64 {
	c.seq++
	c.p.ApplyMsg(c.seq, nats.KeySubject(keyID), data)
	c.last[keyID] = c.seq
	return c.seq
}

func (c *changer) apply(ev events.Event) []byte {
	data := c.signer.MustSeal(c.t, ev)
	c.put(ev.Head().KeyID, data)
	return data
}

func (c *changer) header(t events.Type, id string) events.Header {
	return eventstest.Header(c.t, c.ids, t, id, "admin")
}

func (c *changer) update(id string, f func(*events.KeyUpdated)) []byte {
	u := &events.KeyUpdated{Header: c.header(events.TypeKeyUpdated, id), Prev: events.Prev{Prev: c.last[id]}}
	f(u)
	return c.apply(u)
}

func (c *changer) disable(id string) []byte {
	return c.apply(&events.KeyDisabled{Header: c.header(events.TypeKeyDisabled, id), Prev: events.Prev{Prev: c.last[id]}})
}

func (c *changer) enable(id string) []byte {
	return c.apply(&events.KeyEnabled{Header: c.header(events.TypeKeyEnabled, id), Prev: events.Prev{Prev: c.last[id]}})
}

// roundTrip writes a snapshot of p and loads it into a new projector.
func roundTrip(t *testing.T, p *Projector) *Projector {
	t.Helper()
	cut, err := p.cut()
	if err != nil {
		t.Fatal(err)
	}
	path, err := p.writeSnapshot(t.TempDir(), cut)
	if err != nil {
		t.Fatal(err)
	}
	p2 := New(nil, Options{Records: true, Keyring: p.ring})
	meta, err := peekSnapshotMeta(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p2.loadSnapshot(path, meta); err != nil {
		t.Fatal(err)
	}
	return p2
}

func (c *changer) entry(id string) *Entry {
	e := c.p.table.ByID(id)
	if e == nil {
		c.t.Fatalf("no entry %s", id)
	}
	return e
}

func TestKeysThatChange(t *testing.T) {
	c := newChanger(t, Options{Records: true})
	created := eventstest.Created(t, c.ids, "key_a")
	created.Metadata = json.RawMessage(`{"plan":"pro"}`)
	created.AllowedIPs = []string{"203.0.113.0/24"}
	c.apply(created)
	e := c.entry("key_a")
	if string(e.Metadata()) != `{"plan":"pro"}` || !e.Allowlist().Allows(netip.MustParseAddr("203.0.113.9")) || e.Allowlist().Allows(netip.MustParseAddr("198.51.100.1")) {
		t.Fatalf("created entry: %+v %+v", e, e.Extra)
	}

	t.Run("an update changes what it names and nothing else", func(t *testing.T) {
		c.update("key_a", func(u *events.KeyUpdated) {
			u.Changed = []string{events.FieldPermissions, events.FieldName, events.FieldAllowedIPs}
			u.Permissions, u.Name = []string{"storage:read"}, "renamed"
		})
		e := c.entry("key_a")
		if e.Perms != c.p.permMask([]string{"storage:read"}) || e.Allowlist() != nil || string(e.Metadata()) != `{"plan":"pro"}` {
			t.Fatalf("after the update: perms %b, extra %+v", e.Perms, e.Extra)
		}
		k, _ := c.p.Key("key_a")
		if k.Name != "renamed" || !reflect.DeepEqual(k.Permissions, []string{"storage:read"}) || k.AllowedIPs != nil || k.UpdatedAt == nil {
			t.Fatalf("record after the update: %+v", k)
		}
	})

	var disabled []byte
	t.Run("disable and enable", func(t *testing.T) {
		disabled = c.disable("key_a")
		if !c.entry("key_a").Disabled {
			t.Fatal("not disabled")
		}
		if k, _ := c.p.Key("key_a"); k.StatusAt(time.Now()) != keyledger.StatusDisabled {
			t.Fatalf("status %s", k.StatusAt(time.Now()))
		}
		c.enable("key_a")
		if c.entry("key_a").Disabled {
			t.Fatal("still disabled")
		}
	})

	t.Run("attack: a disable copied back into the stream is refused", func(t *testing.T) {
		before := c.p.Rejected()["replayed"]
		c.put("key_a", disabled)
		if c.entry("key_a").Disabled {
			t.Fatal("a replayed disable applied")
		}
		if c.p.Rejected()["replayed"] != before+1 {
			t.Fatalf("the replay was not counted: %v", c.p.Rejected())
		}
		// The key's next real event follows the replayed one, as the
		// stream's expected sequence makes it.
		c.disable("key_a")
		if !c.entry("key_a").Disabled {
			t.Fatal("a disable after the replay did not apply")
		}
		c.enable("key_a")
	})

	t.Run("attack: an old permission set copied back is refused", func(t *testing.T) {
		wide := c.update("key_a", func(u *events.KeyUpdated) {
			u.Changed, u.Permissions = []string{events.FieldPermissions}, []string{"all"}
		})
		c.update("key_a", func(u *events.KeyUpdated) {
			u.Changed, u.Permissions = []string{events.FieldPermissions}, []string{"storage:read"}
		})
		c.put("key_a", wide)
		if e := c.entry("key_a"); e.Perms != c.p.permMask([]string{"storage:read"}) {
			t.Fatalf("the replayed wide permission set applied: %b", e.Perms)
		}
	})

	t.Run("a rolled key's expiry is never pushed past the roll's", func(t *testing.T) {
		c.apply(eventstest.Created(t, c.ids, "key_r"))
		capAt := eventstest.FixedAt.Add(24 * time.Hour)
		c.apply(&events.KeyRolled{Header: c.header(events.TypeKeyRolled, "key_r"), RolledTo: "key_s", ExpiresAt: capAt})
		c.update("key_r", func(u *events.KeyUpdated) {
			u.Changed, u.ExpiresAt = []string{events.FieldExpiresAt}, nil // "never"
		})
		if got := c.entry("key_r").ExpiresAt; got != capAt.UnixNano() {
			t.Fatalf("expiry after the update %v, want the roll's %v", time.Unix(0, got), capAt)
		}
	})

	t.Run("a revoked key is neither updated nor enabled", func(t *testing.T) {
		c.disable("key_a")
		c.apply(eventstest.Revoked(t, c.ids, "key_a", "leak"))
		c.enable("key_a")
		c.update("key_a", func(u *events.KeyUpdated) { u.Changed, u.Name = []string{events.FieldName}, "x" })
		e := c.entry("key_a")
		if !e.Revoked || !e.Disabled {
			t.Fatalf("after revoke, enable and update: %+v", e)
		}
		if k, _ := c.p.Key("key_a"); k.Name == "x" {
			t.Fatal("a revoked key was renamed")
		}
	})

	t.Run("snapshots carry every field", func(t *testing.T) {
		c.apply(func() *events.KeyCreated {
			k := eventstest.Created(t, c.ids, "key_admin")
			k.Permissions, k.AdminScope = []string{"admin"}, &keyledger.AdminScope{Owner: "acme"}
			return k
		}())
		c.p.streamID = 42
		p2 := roundTrip(t, c.p)
		if p2.table.Digest() != c.p.table.Digest() {
			t.Fatal("table differs")
		}
		for _, id := range []string{"key_a", "key_r", "key_admin"} {
			a, b := c.p.table.ByID(id), p2.table.ByID(id)
			if a.Disabled != b.Disabled || a.Rev != b.Rev || !reflect.DeepEqual(a.Extra.edit(), b.Extra.edit()) {
				t.Fatalf("%s: %+v %+v\n%+v %+v", id, a, a.Extra, b, b.Extra)
			}
			ka, _ := c.p.Key(id)
			kb, _ := p2.Key(id)
			if !reflect.DeepEqual(ka, kb) {
				t.Fatalf("record %s:\n%+v\n%+v", id, ka, kb)
			}
		}
		if p2.table.ByID("key_admin").Scope() != "acme" {
			t.Fatal("scope lost")
		}
	})
}

// skipTo makes p continue after seq, as a Start from a snapshot at seq
// does: the Merkle tree gets placeholder leaves for what p never saw.
func skipTo(p *Projector, seq uint64) {
	p.lastSeq.Store(seq)
	for p.tree.Size() < int64(seq) {
		p.tree.Append(nil)
	}
}
