package admin

import (
	"encoding/json"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

// FuzzPatch feeds arbitrary PATCH bodies to the merge-patch code: it must
// never panic, and whatever it accepts must make an event every node
// accepts (events.Validate) that changes only what the patch named.
func FuzzPatch(f *testing.F) {
	for _, s := range []string{
		`{"name":"x"}`, `{"permissions":["storage:read"]}`, `{"rate_limit":{"per_second":1,"burst":2}}`, `{"rate_limit":null}`,
		`{"expires_at":"2099-01-01T00:00:00Z"}`, `{"expires_at":null}`, `{"metadata":{"a":{"b":null},"c":[1,2]}}`,
		`{"allowed_ips":["10.0.0.0/8","::1"]}`, `{"allowed_ips":null}`, `{"name":null}`, `{"permissions":"all"}`,
	} {
		f.Add(s)
	}
	svc := New(Config{Now: func() time.Time { return time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC) }})
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	k := keyledger.Key{ID: "key_f", Name: "n", Permissions: []string{"all"}, Metadata: json.RawMessage(`{"a":{"b":1}}`), CreatedAt: at}
	f.Fuzz(func(t *testing.T, body string) {
		var patch Patch
		if json.Unmarshal([]byte(body), &patch) != nil {
			return
		}
		ev := &events.KeyUpdated{Header: events.NewHeader(events.TypeKeyUpdated, k.ID, "fuzz", at), Prev: events.Prev{Prev: 1}}
		if err := svc.applyPatch(ev, k, patch, Write{}); err != nil {
			if keyledger.ErrorCode(err) == keyledger.Internal {
				t.Fatalf("internal error for %s: %v", body, err)
			}
			return
		}
		for _, f := range ev.Changed {
			if _, ok := patch[f]; !ok {
				t.Fatalf("%s changed %s, which it does not name", body, f)
			}
		}
		if len(ev.Changed) == 0 {
			return
		}
		if _, err := events.Encode(ev); err != nil {
			t.Fatalf("%s made an event no node accepts: %v", body, err)
		}
	})
}
