package node_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/node/nodetest"
)

func mustJSON(t *testing.T, code, want int, body []byte, v any) {
	t.Helper()
	if code != want {
		t.Fatalf("status %d, want %d: %s", code, want, body)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("decode %s: %v", body, err)
		}
	}
}

type keyJSON struct {
	Key        string     `json:"key"`
	ID         string     `json:"id"`
	Status     string     `json:"status"`
	ExpiresAt  *time.Time `json:"expires_at"`
	RolledFrom string     `json:"rolled_from"`
	RolledTo   string     `json:"rolled_to"`
	Old        struct {
		ID        string     `json:"id"`
		Status    string     `json:"status"`
		ExpiresAt *time.Time `json:"expires_at"`
		RolledTo  string     `json:"rolled_to"`
	} `json:"old_key"`
}

func TestLifecycle(t *testing.T) {
	dir := t.TempDir()
	n := nodetest.MustOpen(t, dir, io.Discard)
	tok, _ := os.ReadFile(filepath.Join(dir, "admin-token"))
	token := strings.TrimSpace(string(tok))
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: token}
	nodetest.WaitReady(t, c)
	create := func(body string) keyJSON {
		code, _, b := c.Call("POST", "/v1/keys", token, body)
		var k keyJSON
		mustJSON(t, code, 201, b, &k)
		return k
	}
	authz := func(key string) int {
		code, _, _ := c.Call("GET", "/v1/authz", key, "")
		return code
	}

	t.Run("roll with a grace period: both keys work, the old one until the grace ends", func(t *testing.T) {
		old := create(`{"name":"svc","environment":"live","owner":"acme","permissions":["storage:read"],"rate_limit":{"per_second":5,"burst":9}}`)
		before := time.Now()
		code, _, b := c.Call("POST", "/v1/keys/"+old.ID+"/roll", token, `{"expire_old_in":"1h"}`)
		var r keyJSON
		mustJSON(t, code, 201, b, &r)
		if r.Key == "" || r.ID == old.ID || r.RolledFrom != old.ID || r.Old.ID != old.ID || r.Old.RolledTo != r.ID {
			t.Fatalf("roll answer %s", b)
		}
		if r.Old.ExpiresAt == nil || r.Old.ExpiresAt.Before(before.Add(time.Hour-time.Minute)) || r.Old.ExpiresAt.After(time.Now().Add(time.Hour)) {
			t.Fatalf("old key expires at %v, want about 1h from now", r.Old.ExpiresAt)
		}
		if !strings.Contains(string(b), `"storage:read"`) || !strings.Contains(string(b), `"per_second":5`) || !strings.Contains(string(b), `"owner":"acme"`) {
			t.Fatalf("new key lost the old one's metadata: %s", b)
		}
		if authz(old.Key) != 200 || authz(r.Key) != 200 {
			t.Fatal("during the grace both keys must work")
		}
	})
	t.Run("roll never extends a key's life, and the new key inherits its expiry", func(t *testing.T) {
		exp := time.Now().Add(10 * time.Minute).UTC().Truncate(time.Second)
		old := create(`{"name":"trial","environment":"live","expires_at":"` + exp.Format(time.RFC3339) + `"}`)
		code, _, b := c.Call("POST", "/v1/keys/"+old.ID+"/roll", token, `{"expire_old_in":"720h"}`)
		var r keyJSON
		mustJSON(t, code, 201, b, &r)
		if r.Old.ExpiresAt == nil || !r.Old.ExpiresAt.Equal(exp) {
			t.Fatalf("old key now expires at %v, want its own %v", r.Old.ExpiresAt, exp)
		}
		if r.ExpiresAt == nil || !r.ExpiresAt.Equal(exp) {
			t.Fatalf("new key expires at %v, want %v: a roll must not make a trial key permanent", r.ExpiresAt, exp)
		}
	})
	t.Run("roll with 0s revokes the old key now; a revoked key cannot be rolled", func(t *testing.T) {
		old := create(`{"name":"now","environment":"live"}`)
		code, _, b := c.Call("POST", "/v1/keys/"+old.ID+"/roll", token, `{"expire_old_in":"0s"}`)
		var r keyJSON
		mustJSON(t, code, 201, b, &r)
		if r.Old.Status != "revoked" || authz(old.Key) != 401 || authz(r.Key) != 200 {
			t.Fatalf("after roll 0s: old %s, old authz %d, new authz %d", r.Old.Status, authz(old.Key), authz(r.Key))
		}
		code, _, b = c.Call("POST", "/v1/keys/"+old.ID+"/roll", token, `{"expire_old_in":"1h"}`)
		if code != 409 || !strings.Contains(string(b), "already_revoked") {
			t.Fatalf("roll of a revoked key: %d %s", code, b)
		}
		if code, _, b := c.Call("POST", "/v1/keys/"+r.ID+"/roll", token, `{"expire_old_in":"soon"}`); code != 400 {
			t.Fatalf("bad grace: %d %s", code, b)
		}
		if code, _, _ := c.Call("POST", "/v1/keys/key_nope/roll", token, `{}`); code != 404 {
			t.Fatalf("roll of unknown key: %d", code)
		}
	})
	t.Run("admin keys: use the admin API, are named as actor, and lock out when revoked", func(t *testing.T) {
		adm := create(`{"name":"ops","environment":"live","permissions":["admin"]}`)
		code, _, b := c.Call("GET", "/v1/keys", adm.Key, "")
		if code != 200 {
			t.Fatalf("admin key listing keys: %d %s", code, b)
		}
		code, _, b = c.Call("POST", "/v1/keys", adm.Key, `{"name":"made-by-ops","environment":"live"}`, "X-Forwarded-For", "198.51.100.23")
		var made keyJSON
		mustJSON(t, code, 201, b, &made)
		code, _, b = c.Call("GET", "/v1/keys/"+made.ID+"/events", token, "")
		if code != 200 || !strings.Contains(string(b), `"actor":"`+adm.ID+`"`) || !strings.Contains(string(b), `"actor_ip":"198.51.100.23"`) {
			t.Fatalf("events of a key made by an admin key: %s", b)
		}
		// "all" does not grant admin; and the answer is that of an invalid
		// key, so that it tells nobody the key works elsewhere.
		full := create(`{"name":"full","environment":"live"}`)
		if code, _, b := c.Call("GET", "/v1/keys", full.Key, ""); code != 401 || !strings.Contains(string(b), "Invalid or missing API key") {
			t.Fatalf("full-access key at the admin API: %d %s", code, b)
		}
		if authz(adm.Key) != 200 {
			t.Fatal("an admin key is also a key")
		}
		if code, _, _ := c.Call("POST", "/v1/keys/"+adm.ID+"/revoke", token, ""); code != 200 {
			t.Fatal("revoke admin key")
		}
		if code, _, b := c.Call("GET", "/v1/keys", adm.Key, ""); code != 401 || strings.TrimSpace(string(b)) != unauthorized {
			t.Fatalf("revoked admin key: %d %s", code, b)
		}
		if code, _, _ := c.Call("POST", "/v1/keys", token, `{"name":"x","environment":"live","permissions":["all","root"]}`); code != 400 {
			t.Fatalf("unknown permission: %d", code)
		}
	})
	t.Run("import: a key issued elsewhere verifies by its hash; the secret never passes through", func(t *testing.T) {
		foreign := "sk_live_51HxQmLegacySystemKey0123456789"
		sum := sha256.Sum256([]byte(foreign))
		body := `{"name":"migrated","environment":"live","owner":"legacy","permissions":["workflows:read"],"hash":"` + hex.EncodeToString(sum[:]) + `","hint":"6789"}`
		code, _, b := c.Call("POST", "/v1/keys/import", token, body)
		var k keyJSON
		mustJSON(t, code, 201, b, &k)
		if strings.Contains(string(b), foreign) || !strings.Contains(string(b), `"imported":true`) {
			t.Fatalf("import answer %s", b)
		}
		code, hdr, _ := c.Call("GET", "/v1/authz", foreign, "", "X-Required-Permission", "workflows:read")
		if code != 200 || hdr.Get("X-Key-Id") != k.ID || hdr.Get("X-Key-Owner") != "legacy" {
			t.Fatalf("imported key at authz: %d %v", code, hdr)
		}
		if authz("sk_live_51HxQmSomethingElse0123456789") != 401 {
			t.Fatal("an unknown foreign key passed")
		}
		if code, _, b := c.Call("POST", "/v1/keys/import", token, body); code != 409 || !strings.Contains(string(b), "already_exists") {
			t.Fatalf("second import: %d %s", code, b)
		}
		if code, _, _ := c.Call("POST", "/v1/keys/import", token, `{"name":"x","environment":"live","hash":"abc"}`); code != 400 {
			t.Fatal("bad hash accepted")
		}
		if code, _, _ := c.Call("POST", "/v1/keys/"+k.ID+"/revoke", token, ""); code != 200 {
			t.Fatal("revoke imported")
		}
		if authz(foreign) != 401 {
			t.Fatal("revoked imported key passed")
		}
	})
}
