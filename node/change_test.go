package node_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/node/nodetest"
)

// updated is the answer to PATCH, disable and enable.
type updated struct {
	ID, Status string
	Revision   uint64
	Changed    []string
	AppliedBy  string `json:"applied_by"`
	Disabled   bool
}

func answer[T any](t *testing.T, code, want int, body []byte) T {
	t.Helper()
	var v T
	if code != want || json.Unmarshal(body, &v) != nil {
		t.Fatalf("answer %d %s; want %d", code, body, want)
	}
	return v
}

// Keys change in place on every node at once, with the guarantees of a
// revocation: a narrowed permission set and a disable are in force on
// every node when the call returns, and nothing is undone by a replay.
func TestCluster_keysThatChange(t *testing.T) {
	c := MustStartCluster(t, 3)
	for i := range c.Nodes {
		nodetest.WaitReady(t, caller(t, c, i))
	}
	nodetest.WaitFor(t, 10*time.Second, "three live nodes in the registry", func() bool {
		return len(c.Nodes[0].Fleet().Live()) == 3
	})
	a := caller(t, c, 0)
	authz := func(i int, key, perm string) int {
		hdr := []string{}
		if perm != "" {
			hdr = append(hdr, "X-Required-Permission", perm)
		}
		code, _, _ := caller(t, c, i).Call("GET", "/v1/authz", key, "", hdr...)
		return code
	}
	code, _, body := a.Call("POST", "/v1/keys", a.Token, `{"name":"ci","environment":"live","permissions":["storage:read","storage:write"],"metadata":{"plan":"pro"}}`)
	k := answer[createdKey](t, code, 201, body)

	t.Run("a narrowed permission set is refused on every node when the update returns", func(t *testing.T) {
		for i := range c.Nodes {
			if got := authz(i, k.Key, "storage:write"); got != 200 {
				t.Fatalf("node %d before: %d", i, got)
			}
		}
		code, hdr, body := caller(t, c, 1).Call("PATCH", "/v1/keys/"+k.ID, a.Token, `{"permissions":["storage:read"],"reason":"least privilege"}`)
		u := answer[updated](t, code, 200, body)
		if u.AppliedBy != "3/3" || len(u.Changed) != 1 || u.Changed[0] != "permissions" || hdr.Get("ETag") != fmt.Sprintf("%q", fmt.Sprint(u.Revision)) {
			t.Fatalf("update: %s (ETag %s)", body, hdr.Get("ETag"))
		}
		for i := range c.Nodes {
			if got := authz(i, k.Key, "storage:write"); got != 403 {
				t.Fatalf("node %d: %d for a removed permission right after the update returned, want 403", i, got)
			}
			if got := authz(i, k.Key, "storage:read"); got != 200 {
				t.Fatalf("node %d: %d for a kept permission", i, got)
			}
		}
	})

	t.Run("disable is refused everywhere, enable brings it back", func(t *testing.T) {
		code, _, body := caller(t, c, 2).Call("POST", "/v1/keys/"+k.ID+"/disable", a.Token, `{"reason":"investigating"}`)
		if u := answer[updated](t, code, 200, body); u.Status != "disabled" || u.AppliedBy != "3/3" {
			t.Fatalf("disable: %s", body)
		}
		for i := range c.Nodes {
			code, _, body := caller(t, c, i).Call("GET", "/v1/authz", k.Key, "")
			if code != 401 || !strings.Contains(string(body), `"Invalid or missing API key"`) {
				t.Fatalf("node %d: disabled key answered %d %s", i, code, body)
			}
		}
		code, _, body = a.Call("POST", "/v1/keys/"+k.ID+"/enable", a.Token, "")
		if u := answer[updated](t, code, 200, body); u.Status != "active" || u.AppliedBy != "3/3" {
			t.Fatalf("enable: %s", body)
		}
		for i := range c.Nodes {
			if got := authz(i, k.Key, "storage:read"); got != 200 {
				t.Fatalf("node %d: re-enabled key answered %d", i, got)
			}
		}
	})

	t.Run("concurrent updates with one If-Match: exactly one wins", func(t *testing.T) {
		code, hdr, body := a.Call("GET", "/v1/keys/"+k.ID, a.Token, "")
		if code != 200 {
			t.Fatalf("get: %d %s", code, body)
		}
		tag := hdr.Get("ETag")
		var wg sync.WaitGroup
		codes := make([]int, 6)
		bodies := make([]string, 6)
		for i := range codes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, _, body := caller(t, c, i%3).Call("PATCH", "/v1/keys/"+k.ID, a.Token, fmt.Sprintf(`{"name":"writer %d"}`, i), "If-Match", tag)
				codes[i], bodies[i] = code, string(body)
			}()
		}
		wg.Wait()
		won := 0
		for _, code := range codes {
			switch code {
			case 200:
				won++
			case 412:
			default:
				t.Fatalf("answers %v: want one 200 and 412s (%q)", codes, bodies)
			}
		}
		if won != 1 {
			t.Fatalf("answers %v: %d updates won with the same If-Match", codes, won)
		}
	})

	t.Run("concurrent merges without If-Match lose nothing", func(t *testing.T) {
		var wg sync.WaitGroup
		codes := make([]int, 6)
		for i := range codes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, _, _ := caller(t, c, i%3).Call("PATCH", "/v1/keys/"+k.ID, a.Token, fmt.Sprintf(`{"metadata":{"w%d":%d}}`, i, i))
				codes[i] = code
			}()
		}
		wg.Wait()
		_, _, body := a.Call("GET", "/v1/keys/"+k.ID, a.Token, "")
		for i, code := range codes {
			if code != 200 {
				t.Fatalf("concurrent merges answered %v", codes)
			}
			if !strings.Contains(string(body), fmt.Sprintf(`"w%d":%d`, i, i)) {
				t.Fatalf("writer %d's member was lost: %d %s", i, code, body)
			}
		}
	})

	t.Run("metadata merges, and /v1/verify returns it", func(t *testing.T) {
		code, _, body := a.Call("PATCH", "/v1/keys/"+k.ID, a.Token, `{"metadata":{"tenant":"t-1","plan":null,"w0":null,"w1":null,"w2":null,"w3":null,"w4":null,"w5":null}}`)
		answer[updated](t, code, 200, body)
		for i := range c.Nodes {
			code, _, body := caller(t, c, i).Call("POST", "/v1/verify", "", fmt.Sprintf(`{"key":%q}`, k.Key))
			if code != 200 || !strings.Contains(string(body), `"metadata":{"tenant":"t-1"}`) {
				t.Fatalf("node %d verify: %d %s", i, code, body)
			}
		}
	})

	t.Run("a revoked key is neither updated nor enabled", func(t *testing.T) {
		code, _, body := a.Call("POST", "/v1/keys/"+k.ID+"/revoke", a.Token, "")
		if code != 200 {
			t.Fatalf("revoke: %d %s", code, body)
		}
		for _, tc := range []struct{ method, path, body string }{
			{"PATCH", "/v1/keys/" + k.ID, `{"name":"zombie"}`},
			{"POST", "/v1/keys/" + k.ID + "/enable", ""},
			{"POST", "/v1/keys/" + k.ID + "/disable", ""},
		} {
			if code, _, body := a.Call(tc.method, tc.path, a.Token, tc.body); code != 409 {
				t.Fatalf("%s %s on a revoked key: %d %s", tc.method, tc.path, code, body)
			}
		}
	})
}

// The admin API's answers to keys that change: validation, allowlists
// under the trusted-proxy rules, owner-scoped admin keys, and a valid
// non-admin key answered like an invalid one.
func TestNode_keysThatChange(t *testing.T) {
	dir := t.TempDir()
	cfg := nodetest.Config(dir, io.Discard)
	cfg.AdminToken = "test-admin-token-0123456789"
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: cfg.AdminToken}
	nodetest.WaitReady(t, c)
	create := func(body string) createdKey {
		t.Helper()
		code, _, b := c.Call("POST", "/v1/keys", c.Token, body)
		return answer[createdKey](t, code, 201, b)
	}

	t.Run("patch validation", func(t *testing.T) {
		k := create(`{"name":"v","environment":"live"}`)
		for _, tc := range []struct{ body, want string }{
			{`{}`, "names no field"},
			{`{"owner":"x"}`, "cannot be changed"},
			{`{"colour":"red"}`, "unknown field"},
			{`{"name":null}`, "name must be a string"},
			{`{"permissions":["nope"]}`, "unknown permission"},
			{`{"allowed_ips":["10.0.0.1/8"]}`, "host bits"},
			{`{"metadata":[1]}`, "JSON object"},
			{`{"expires_at":"2001-01-01T00:00:00Z"}`, "in the future"},
			{`{"rate_limit":{"per_second":-1,"burst":1}}`, "per_second"},
		} {
			code, _, body := c.Call("PATCH", "/v1/keys/"+k.ID, c.Token, tc.body)
			if code != 400 || !strings.Contains(string(body), tc.want) {
				t.Errorf("PATCH %s: %d %s; want 400 saying %q", tc.body, code, body, tc.want)
			}
		}
		if code, _, body := c.Call("PATCH", "/v1/keys/"+k.ID, c.Token, `{"name":"w"}`, "If-Match", `"999"`); code != 412 {
			t.Errorf("a stale If-Match: %d %s", code, body)
		}
		if code, _, body := c.Call("PATCH", "/v1/keys/key_nope", c.Token, `{"name":"w"}`); code != 404 {
			t.Errorf("PATCH of an unknown key: %d %s", code, body)
		}
	})

	t.Run("paging visits every key once while keys are being created", func(t *testing.T) {
		before := map[string]bool{}
		for i := range 120 {
			k := create(fmt.Sprintf(`{"name":"page-%d","environment":"live","owner":"pager"}`, i))
			before[k.ID] = true
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // more keys while the pages are read
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c.Try("POST", "/v1/keys", c.Token, fmt.Sprintf(`{"name":"late-%d","environment":"live","owner":"pager"}`, i))
			}
		}()
		seen := map[string]int{}
		pages := 0
		for cursor := ""; ; pages++ {
			path := "/v1/keys?owner=pager&limit=17"
			if cursor != "" {
				path += "&cursor=" + url.QueryEscape(cursor)
			}
			code, _, body := c.Call("GET", path, c.Token, "")
			var page struct {
				Keys []struct {
					ID string
				}
				NextCursor string `json:"next_cursor"`
			}
			if code != 200 || json.Unmarshal(body, &page) != nil || len(page.Keys) > 17 {
				t.Fatalf("page %d: %d %s", pages, code, body)
			}
			for _, k := range page.Keys {
				seen[k.ID]++
			}
			if cursor = page.NextCursor; cursor == "" {
				break
			}
		}
		close(stop)
		<-done
		for id := range before {
			if seen[id] != 1 {
				t.Fatalf("key %s seen %d times over %d pages", id, seen[id], pages)
			}
		}
		for id, n := range seen {
			if n != 1 {
				t.Fatalf("key %s seen %d times", id, n)
			}
		}
		if code, _, body := c.Call("GET", "/v1/keys?cursor=garbage", c.Token, ""); code != 400 {
			t.Fatalf("a forged cursor: %d %s", code, body)
		}
		if code, _, body := c.Call("GET", "/v1/keys?limit=1001", c.Token, ""); code != 400 {
			t.Fatalf("limit 1001: %d %s", code, body)
		}
		code, _, body := c.Call("GET", "/v1/keys?owner=pager&name_prefix=page-11", c.Token, "")
		if code != 200 || strings.Count(string(body), `"name":"page-11`) != 11 { // page-11, page-110 … page-119
			t.Fatalf("name_prefix: %d %s", code, body)
		}
	})

	t.Run("allowlists", func(t *testing.T) {
		k := create(`{"name":"ip","environment":"live","allowed_ips":["203.0.113.0/24","2001:db8::/32"]}`)
		for _, tc := range []struct {
			xff  string
			want int
		}{
			{"203.0.113.9", 200}, {"2001:db8::5", 200}, {"198.51.100.1", 403}, {"2001:db9::1", 403}, {"", 403},
		} {
			var hdr []string
			if tc.xff != "" {
				hdr = []string{"X-Forwarded-For", tc.xff}
			}
			code, _, body := c.Call("GET", "/v1/authz", k.Key, "", hdr...)
			if code != tc.want {
				t.Errorf("from %q: %d %s; want %d", tc.xff, code, body, tc.want)
			}
			if code == 403 && (!strings.Contains(string(body), "source address") || strings.Contains(string(body), "203.0.113")) {
				t.Errorf("the refusal %s should say the source is not allowed without echoing the list", body)
			}
		}
	})

	t.Run("attack: a forwarded header from an untrusted peer does not unlock an allowlist", func(t *testing.T) {
		cfg := nodetest.Config(t.TempDir(), io.Discard)
		cfg.AdminToken = "test-admin-token-0123456789"
		cfg.TrustedProxies = []netip.Prefix{} // nobody's forwarded headers
		n := nodetest.MustOpenConfig(t, cfg)
		c2 := &nodetest.Caller{T: t, Base: n.URL(), Token: cfg.AdminToken}
		nodetest.WaitReady(t, c2)
		code, _, b := c2.Call("POST", "/v1/keys", c2.Token, `{"name":"ip","environment":"live","allowed_ips":["203.0.113.0/24"]}`)
		k := answer[createdKey](t, code, 201, b)
		for _, h := range []string{"X-Forwarded-For", "X-Real-IP"} {
			if code, _, _ := c2.Call("GET", "/v1/authz", k.Key, "", h, "203.0.113.9"); code != 403 {
				t.Fatalf("a spoofed %s from an untrusted peer got %d", h, code)
			}
		}
	})

	t.Run("attack: a valid non-admin key on the admin API gets the 401 of an invalid one", func(t *testing.T) {
		k := create(`{"name":"plain","environment":"live","permissions":["storage:read"]}`)
		code, _, body := c.Call("GET", "/v1/keys", k.Key, "")
		code2, _, body2 := c.Call("GET", "/v1/keys", "fsk_live_000000000000000000000000000000000000", "")
		if code != 401 || string(body) != string(body2) {
			t.Fatalf("non-admin key %d %s; invalid key %d %s: must be the same", code, body, code2, body2)
		}
	})

	t.Run("attack: an owner-scoped admin key stays in its owner", func(t *testing.T) {
		scoped := create(`{"name":"acme admin","environment":"live","owner":"acme","permissions":["admin"],"admin_scope":{"owner":"acme"}}`)
		mine := create(`{"name":"acme key","environment":"live","owner":"acme"}`)
		theirs := create(`{"name":"globex key","environment":"live","owner":"globex"}`)
		as := func(method, path, body string) (int, string) {
			code, _, b := c.Call(method, path, scoped.Key, body)
			return code, string(b)
		}
		code, body := as("GET", "/v1/keys", "")
		if code != 200 || !strings.Contains(body, mine.ID) || strings.Contains(body, theirs.ID) {
			t.Fatalf("scoped list: %d %s", code, body)
		}
		if code, body := as("GET", "/v1/keys?owner=globex", ""); code != 200 || strings.Contains(body, theirs.ID) {
			t.Fatalf("scoped list of another owner: %d %s", code, body)
		}
		for _, tc := range []struct{ method, path, body string }{
			{"GET", "/v1/keys/" + theirs.ID, ""},
			{"GET", "/v1/keys/" + theirs.ID + "/events", ""},
			{"PATCH", "/v1/keys/" + theirs.ID, `{"name":"pwned"}`},
			{"POST", "/v1/keys/" + theirs.ID + "/disable", ""},
			{"POST", "/v1/keys/" + theirs.ID + "/revoke", ""},
			{"POST", "/v1/keys/" + theirs.ID + "/roll", ""},
		} {
			code, body := as(tc.method, tc.path, tc.body)
			code2, body2 := as(tc.method, strings.Replace(tc.path, theirs.ID, "key_doesnotexist", 1), tc.body)
			if code != 404 || code2 != 404 || strings.ReplaceAll(body, theirs.ID, "X") != strings.ReplaceAll(body2, "key_doesnotexist", "X") {
				t.Fatalf("%s %s of another owner's key: %d %s (an unknown key: %d %s); want the same 404", tc.method, tc.path, code, body, code2, body2)
			}
		}
		for _, tc := range []struct{ body, why string }{
			{`{"name":"x","environment":"live","owner":"globex"}`, "a key for another owner"},
			{`{"name":"x","environment":"live","permissions":["admin"],"admin_scope":{"owner":"globex"}}`, "an admin key for another owner"},
		} {
			if code, body := as("POST", "/v1/keys", tc.body); code != 403 {
				t.Fatalf("scoped create of %s: %d %s", tc.why, code, body)
			}
		}
		// An admin key it issues is scoped to its owner, whatever it asks.
		code, body = as("POST", "/v1/keys", `{"name":"sub admin","environment":"live","permissions":["admin"]}`)
		if code != 201 || !strings.Contains(body, `"admin_scope":{"owner":"acme"}`) || !strings.Contains(body, `"owner":"acme"`) {
			t.Fatalf("scoped create of an admin key: %d %s", code, body)
		}
		// Nor can it turn one of its keys into an unscoped admin key.
		if code, body := as("PATCH", "/v1/keys/"+mine.ID, `{"permissions":["admin"]}`); code != 403 {
			t.Fatalf("scoped grant of admin to an unscoped key: %d %s", code, body)
		}
		if code, body := as("GET", "/v1/nodes", ""); code != 403 {
			t.Fatalf("scoped fleet view: %d %s", code, body)
		}
		// What it may do, it does.
		if code, body := as("PATCH", "/v1/keys/"+mine.ID, `{"name":"renamed"}`); code != 200 {
			t.Fatalf("scoped update of its own key: %d %s", code, body)
		}
		if code, body := as("POST", "/v1/keys/"+mine.ID+"/revoke", ""); code != 200 {
			t.Fatalf("scoped revoke of its own key: %d %s", code, body)
		}
		// And once revoked, the scoped admin key itself is locked out.
		if code, _, body := c.Call("POST", "/v1/keys/"+scoped.ID+"/revoke", c.Token, ""); code != 200 {
			t.Fatalf("revoke the scoped admin key: %d %s", code, body)
		}
		if code, _ := as("GET", "/v1/keys", ""); code != 401 {
			t.Fatalf("a revoked admin key still works: %d", code)
		}
	})
}
