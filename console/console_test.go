package console_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	khttp "github.com/keyledger/keyledger/http"
	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/node/nodetest"
)

const testToken = "console-test-token-0123456789abcdef"

// session is a browser without a browser: a cookie jar and the forms'
// hidden fields, read from the pages as a browser would.
type session struct {
	t      *testing.T
	base   string
	client *http.Client
	// seen collects every response body, to check that no secret is in
	// any of them but the one page that shows it.
	seen []string
}

func newSession(t *testing.T, base string) *session {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &session{t: t, base: base, client: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (s *session) do(req *http.Request) (*http.Response, string) {
	s.t.Helper()
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	s.seen = append(s.seen, string(b))
	return resp, string(b)
}

func (s *session) get(path string) (*http.Response, string) {
	s.t.Helper()
	req, err := http.NewRequest("GET", s.base+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	return s.do(req)
}

// post sends a form as the console's own pages do (same Origin).
func (s *session) post(path string, form url.Values, hdr ...string) (*http.Response, string) {
	s.t.Helper()
	req, err := http.NewRequest("POST", s.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", s.base)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return s.do(req)
}

var (
	csrfField  = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	nonceField = regexp.MustCompile(`name="nonce" value="([^"]+)"`)
	secretOut  = regexp.MustCompile(`data-secret>([^<]+)<`)
)

func field(t *testing.T, re *regexp.Regexp, page string) string {
	t.Helper()
	m := re.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no %s in page:\n%s", re, page)
	}
	return m[1]
}

// signIn signs in with cred and returns the session's CSRF token.
func (s *session) signIn(cred string) string {
	s.t.Helper()
	_, page := s.get("/console/signin")
	resp, body := s.post("/console/signin", url.Values{"csrf": {field(s.t, csrfField, page)}, "credential": {cred}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/console/keys" {
		s.t.Fatalf("sign in: %d %s", resp.StatusCode, body)
	}
	_, page = s.get("/console/keys")
	return field(s.t, csrfField, page)
}

// create creates a key in the console and returns its id and secret.
func (s *session) create(csrf, name string, extra url.Values) (id, secret string) {
	s.t.Helper()
	_, page := s.get("/console/keys/new")
	form := url.Values{"csrf": {csrf}, "nonce": {field(s.t, nonceField, page)}, "name": {name}, "environment": {"live"}, "permissions": {"all"}}
	for k, v := range extra {
		form[k] = v
	}
	resp, body := s.post("/console/keys", form)
	if resp.StatusCode != http.StatusCreated {
		s.t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	secret = field(s.t, secretOut, body)
	id = field(s.t, regexp.MustCompile(`<code>(key_[0-9a-f]+)</code>`), body)
	return id, secret
}

func openNode(t *testing.T) *node.Node {
	cfg := nodetest.Config(t.TempDir(), io.Discard)
	cfg.AdminToken = testToken
	n := nodetest.MustOpenConfig(t, cfg)
	nodetest.WaitReady(t, &nodetest.Caller{T: t, Base: n.URL(), Token: testToken})
	return n
}

func TestConsole(t *testing.T) {
	n := openNode(t)
	api := &nodetest.Caller{T: t, Base: n.URL(), Token: testToken}
	mkKey := func(body string) (id, secret string) {
		t.Helper()
		code, _, b := api.Call("POST", "/v1/keys", testToken, body)
		var k struct {
			ID  string `json:"id"`
			Key string `json:"key"`
		}
		if code != 201 || json.Unmarshal(b, &k) != nil {
			t.Fatalf("create: %d %s", code, b)
		}
		return k.ID, k.Key
	}
	someID, someSecret := mkKey(`{"name":"some key","environment":"live","owner":"org_a"}`)

	pages := []string{"/console/keys", "/console/keys/new", "/console/keys/" + someID, "/console/activity"}
	actions := []string{"/console/keys", "/console/keys/" + someID + "/revoke", "/console/keys/" + someID + "/roll",
		"/console/keys/" + someID + "/disable", "/console/keys/" + someID + "/enable", "/console/signout"}

	t.Run("without a session", func(t *testing.T) {
		s := newSession(t, n.URL())
		for _, p := range append(pages, "/console/") {
			resp, _ := s.get(p)
			if resp.StatusCode != http.StatusSeeOther || !strings.HasSuffix(resp.Header.Get("Location"), "/console/signin") && p != "/console/" {
				t.Errorf("GET %s: %d → %q, want a redirect to sign-in", p, resp.StatusCode, resp.Header.Get("Location"))
			}
		}
		for _, p := range actions {
			resp, body := s.post(p, url.Values{"csrf": {"x"}, "confirm": {"some key"}, "reason": {"r"}, "grace": {"0s"}, "name": {"n"}, "environment": {"live"}})
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("POST %s: %d %s, want 401", p, resp.StatusCode, body)
			}
		}
		if code, _, _ := api.Call("GET", "/v1/authz", someSecret, ""); code != 200 {
			t.Fatalf("a refused action changed the key: authz %d", code)
		}
	})

	t.Run("security headers", func(t *testing.T) {
		s := newSession(t, n.URL())
		resp, _ := s.get("/console/signin")
		h := resp.Header
		csp := h.Get("Content-Security-Policy")
		for _, want := range []string{"script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "default-src 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("CSP %q lacks %q", csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") {
			t.Errorf("CSP allows inline code: %q", csp)
		}
		if h.Get("X-Frame-Options") != "DENY" || h.Get("Cache-Control") != "no-store" || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("headers: %v", h)
		}
		// Pages carry no inline script or style for the CSP to refuse.
		for _, p := range []string{"/console/signin"} {
			_, body := s.get(p)
			if strings.Contains(body, "<script>") || strings.Contains(body, "style=") || strings.Contains(body, "onclick") {
				t.Errorf("%s has inline code", p)
			}
		}
	})

	t.Run("sign-in", func(t *testing.T) {
		s := newSession(t, n.URL())
		const tok = "<the form's token>" // each failed attempt re-issues it
		for _, tc := range []struct {
			name string
			form url.Values
			hdr  []string
			want int
		}{
			{"wrong token", url.Values{"csrf": {tok}, "credential": {"not-the-token-0123456789"}}, nil, 401},
			{"empty", url.Values{"csrf": {tok}, "credential": {""}}, nil, 401},
			{"a valid key without admin", url.Values{"csrf": {tok}, "credential": {someSecret}}, nil, 401},
			{"no CSRF token", url.Values{"credential": {testToken}}, nil, 403},
			{"another site's form", url.Values{"csrf": {tok}, "credential": {testToken}}, []string{"Origin", "https://evil.example"}, 403},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, page := s.get("/console/signin")
				if tc.form.Get("csrf") == tok {
					tc.form.Set("csrf", field(t, csrfField, page))
				}
				resp, body := s.post("/console/signin", tc.form, tc.hdr...)
				if resp.StatusCode != tc.want {
					t.Fatalf("%d, want %d: %s", resp.StatusCode, tc.want, body)
				}
				for _, c := range resp.Cookies() {
					if c.Name == "keyledger_session" && c.Value != "" {
						t.Fatal("a refused sign-in set a session cookie")
					}
				}
				if strings.Contains(body, someSecret) || strings.Contains(body, testToken) {
					t.Fatal("the refusal echoes the credential")
				}
			})
		}
		t.Run("the session cookie", func(t *testing.T) {
			_, page := s.get("/console/signin")
			resp, _ := s.post("/console/signin", url.Values{"csrf": {field(t, csrfField, page)}, "credential": {testToken}}, "X-Forwarded-Proto", "https")
			var got *http.Cookie
			for _, c := range resp.Cookies() {
				if c.Name == "keyledger_session" {
					got = c
				}
			}
			if got == nil || !got.HttpOnly || !got.Secure || got.SameSite != http.SameSiteStrictMode || got.Path != "/console/" {
				t.Fatalf("session cookie: %+v", got)
			}
			if strings.Contains(resp.Header.Get("Location"), testToken) {
				t.Fatal("the token is in a URL")
			}
		})
	})

	t.Run("CSRF", func(t *testing.T) {
		s := newSession(t, n.URL())
		csrf := s.signIn(testToken)
		id, secret := s.create(csrf, "csrf target", nil)
		for _, tc := range []struct {
			name string
			form url.Values
			hdr  []string
		}{
			{"no token", url.Values{"confirm": {"csrf target"}, "reason": {"x"}}, nil},
			{"wrong token", url.Values{"csrf": {"AAAA" + csrf[4:]}, "confirm": {"csrf target"}, "reason": {"x"}}, nil},
			{"another origin", url.Values{"csrf": {csrf}, "confirm": {"csrf target"}, "reason": {"x"}}, []string{"Origin", "https://evil.example"}},
			{"opaque origin", url.Values{"csrf": {csrf}, "confirm": {"csrf target"}, "reason": {"x"}}, []string{"Origin", "null"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, body := s.post("/console/keys/"+id+"/revoke", tc.form, tc.hdr...)
				if resp.StatusCode != http.StatusForbidden {
					t.Fatalf("%d, want 403: %s", resp.StatusCode, body)
				}
				if code, _, _ := api.Call("GET", "/v1/authz", secret, ""); code != 200 {
					t.Fatal("the refused revoke revoked the key")
				}
			})
		}
	})

	t.Run("create, revoke, roll", func(t *testing.T) {
		s := newSession(t, n.URL())
		csrf := s.signIn(testToken)
		id, secret := s.create(csrf, "journey", url.Values{"owner": {"org_b"}, "rate_per_second": {"5"}, "rate_burst": {"10"},
			"expires_at": {time.Now().Add(48 * time.Hour).UTC().Format("2006-01-02T15:04")}})
		if code, _, _ := api.Call("GET", "/v1/authz", secret, ""); code != 200 {
			t.Fatalf("the created key: authz %d", code)
		}
		code, _, rec := api.Call("GET", "/v1/keys/"+id, testToken, "")
		if code != 200 || !strings.Contains(string(rec), `"per_second":5`) || !strings.Contains(string(rec), `"owner":"org_b"`) {
			t.Fatalf("the created record: %d %s", code, rec)
		}
		_, page := s.get("/console/keys/" + id)
		if !strings.Contains(page, "expiring soon") || !strings.Contains(page, "KeyCreated") {
			t.Fatalf("key page: %s", page)
		}

		t.Run("a resubmitted create issues nothing", func(t *testing.T) {
			_, page := s.get("/console/keys/new")
			form := url.Values{"csrf": {csrf}, "nonce": {field(t, nonceField, page)}, "name": {"once"}, "environment": {"live"}}
			if resp, body := s.post("/console/keys", form); resp.StatusCode != 201 {
				t.Fatalf("first: %d %s", resp.StatusCode, body)
			}
			resp, body := s.post("/console/keys", form)
			if resp.StatusCode != http.StatusConflict || secretOut.MatchString(body) {
				t.Fatalf("resubmitted: %d %s", resp.StatusCode, body)
			}
			_, _, list := api.Call("GET", "/v1/keys?name_prefix=once", testToken, "")
			if strings.Count(string(list), `"name":"once"`) != 1 {
				t.Fatalf("keys named once: %s", list)
			}
		})
		t.Run("a bad form keeps its values and issues nothing", func(t *testing.T) {
			_, page := s.get("/console/keys/new")
			form := url.Values{"csrf": {csrf}, "nonce": {field(t, nonceField, page)}, "name": {"bad"}, "environment": {"live"},
				"permissions": {"no:such"}}
			resp, body := s.post("/console/keys", form)
			if resp.StatusCode != 400 || !strings.Contains(body, "unknown permission") || !strings.Contains(body, `value="bad"`) {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			form["permissions"] = []string{"storage:read"}
			if resp, body := s.post("/console/keys", form); resp.StatusCode != 201 {
				t.Fatalf("corrected resubmission: %d %s", resp.StatusCode, body)
			}
		})
		t.Run("revoke needs the typed name and a reason", func(t *testing.T) {
			for _, form := range []url.Values{
				{"csrf": {csrf}, "confirm": {"Journey"}, "reason": {"x"}},
				{"csrf": {csrf}, "confirm": {"journey"}, "reason": {" "}},
			} {
				if resp, _ := s.post("/console/keys/"+id+"/revoke", form); resp.StatusCode != 400 {
					t.Fatalf("revoke %v: %d", form, resp.StatusCode)
				}
			}
			if code, _, _ := api.Call("GET", "/v1/authz", secret, ""); code != 200 {
				t.Fatal("a refused revoke revoked")
			}
		})
		t.Run("roll", func(t *testing.T) {
			_, page := s.get("/console/keys/" + id)
			resp, body := s.post("/console/keys/"+id+"/roll", url.Values{"csrf": {csrf}, "nonce": {field(t, nonceField, page)}, "grace": {"15m"}})
			if resp.StatusCode != 201 || !strings.Contains(body, "Applied by") {
				t.Fatalf("roll: %d %s", resp.StatusCode, body)
			}
			newSecret := field(t, secretOut, body)
			if code, _, _ := api.Call("GET", "/v1/authz", newSecret, ""); code != 200 {
				t.Fatal("the rolled key does not work")
			}
			if code, _, _ := api.Call("GET", "/v1/authz", secret, ""); code != 200 {
				t.Fatal("the old key stopped before its grace period")
			}
			if resp, _ := s.post("/console/keys/"+id+"/roll", url.Values{"csrf": {csrf}, "nonce": {field(t, nonceField, page)}, "grace": {"2h"}}); resp.StatusCode != 400 {
				t.Fatalf("a grace the console does not offer: %d", resp.StatusCode)
			}
		})
		t.Run("revoke", func(t *testing.T) {
			resp, _ := s.post("/console/keys/"+id+"/revoke", url.Values{"csrf": {csrf}, "confirm": {"journey"}, "reason": {"test revoke"}})
			if resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("revoke: %d", resp.StatusCode)
			}
			if code, _, _ := api.Call("GET", "/v1/authz", secret, ""); code != 401 {
				t.Fatalf("after revoke: authz %d", code)
			}
			_, page := s.get(resp.Header.Get("Location"))
			if !strings.Contains(page, "Applied by 1/1 nodes") || !strings.Contains(page, "KeyRevoked") || !strings.Contains(page, "test revoke") {
				t.Fatalf("key page after revoke: %s", page)
			}
		})
		t.Run("disable and enable", func(t *testing.T) {
			id2, secret2 := s.create(csrf, "pausable", nil)
			if resp, _ := s.post("/console/keys/"+id2+"/disable", url.Values{"csrf": {csrf}}); resp.StatusCode != 303 {
				t.Fatalf("disable: %d", resp.StatusCode)
			}
			if code, _, _ := api.Call("GET", "/v1/authz", secret2, ""); code != 401 {
				t.Fatalf("disabled: %d", code)
			}
			if resp, _ := s.post("/console/keys/"+id2+"/enable", url.Values{"csrf": {csrf}}); resp.StatusCode != 303 {
				t.Fatalf("enable: %d", resp.StatusCode)
			}
			if code, _, _ := api.Call("GET", "/v1/authz", secret2, ""); code != 200 {
				t.Fatalf("enabled: %d", code)
			}
		})
		t.Run("search and filters", func(t *testing.T) {
			for _, tc := range []struct{ q, want, not string }{
				{"?in=name&q=jour", "journey", "some key"},
				{"?in=owner&q=org_a", "some key", "journey"},
				{"?in=id&q=" + someID, "some key", "journey"},
				{"?in=id&q=key_nosuch", "No key matches", "some key"},
				{"?status=revoked", "journey", "some key"},
				{"?environment=test", "No key matches", "some key"},
			} {
				resp, page := s.get("/console/keys" + tc.q)
				if resp.StatusCode != 200 || !strings.Contains(page, tc.want) || strings.Contains(page, ">"+tc.not+"<") {
					t.Errorf("%s: %d, want %q and not %q", tc.q, resp.StatusCode, tc.want, tc.not)
				}
			}
			if resp, _ := s.get("/console/keys?status=nonsense"); resp.StatusCode != 400 {
				t.Errorf("bad status filter: %d", resp.StatusCode)
			}
		})
		t.Run("a secret in a URL is refused", func(t *testing.T) {
			resp, body := s.get("/console/keys?in=name&q=" + url.QueryEscape(someSecret))
			if resp.StatusCode != 400 || strings.Contains(body, someSecret) {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
		})
		t.Run("sign out", func(t *testing.T) {
			if resp, _ := s.post("/console/signout", url.Values{"csrf": {csrf}}); resp.StatusCode != 303 {
				t.Fatalf("sign out: %d", resp.StatusCode)
			}
			if resp, _ := s.get("/console/keys"); resp.StatusCode != 303 {
				t.Fatalf("after sign out: %d", resp.StatusCode)
			}
		})

		// Only a create or roll result shows a secret, and the admin
		// token is in no page at all.
		for i, body := range s.seen {
			if strings.Contains(body, testToken) {
				t.Fatalf("response %d holds the admin token", i)
			}
			if secretOut.MatchString(body) {
				continue
			}
			if strings.Contains(body, secret) || strings.Contains(body, someSecret) {
				t.Fatalf("response %d holds a secret outside its result page:\n%s", i, body)
			}
		}
	})

	t.Run("analytics off", func(t *testing.T) {
		s := newSession(t, n.URL())
		s.signIn(testToken)
		for _, p := range pages {
			resp, body := s.get(p)
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d %s", p, resp.StatusCode, body)
			}
			if p != "/console/keys/new" && !strings.Contains(body, "Analytics is off") {
				t.Errorf("%s does not say analytics is off", p)
			}
		}
		if _, body := s.get("/console/activity"); !strings.Contains(body, "e2e") {
			t.Errorf("the fleet panel lacks this node")
		}
	})

	t.Run("admin key session", func(t *testing.T) {
		adminID, adminSecret := mkKey(`{"name":"ops admin","environment":"live","permissions":["admin"]}`)
		s := newSession(t, n.URL())
		csrf := s.signIn(adminSecret)
		_, page := s.get("/console/keys")
		if !strings.Contains(page, adminID) {
			t.Fatalf("signed in as %s? %s", adminID, page)
		}
		victim, victimSecret := s.create(csrf, "made by a key", nil)
		_, hist := s.get("/console/keys/" + victim)
		if !strings.Contains(hist, "<td>"+adminID+"</td>") {
			t.Fatal("the history does not name the admin key as the actor")
		}
		// Revoking the admin key (elsewhere: through the API) ends its
		// session on the next request, for pages and actions alike.
		if code, _, b := api.Call("POST", "/v1/keys/"+adminID+"/revoke", testToken, `{"reason":"offboarded"}`); code != 200 {
			t.Fatalf("revoke admin key: %d %s", code, b)
		}
		resp, body := s.post("/console/keys/"+victim+"/revoke", url.Values{"csrf": {csrf}, "confirm": {"made by a key"}, "reason": {"x"}})
		if resp.StatusCode != 401 {
			t.Fatalf("an action of a revoked admin key's session: %d %s", resp.StatusCode, body)
		}
		if code, _, _ := api.Call("GET", "/v1/authz", victimSecret, ""); code != 200 {
			t.Fatal("the revoked admin key's session revoked a key")
		}
		if resp, _ := s.get("/console/keys"); resp.StatusCode != 303 {
			t.Fatalf("a page of a revoked admin key's session: %d", resp.StatusCode)
		}
		if resp, body := s.post("/console/signin", url.Values{"credential": {adminSecret}}); resp.StatusCode == 303 {
			t.Fatalf("a revoked admin key signed in again: %s", body)
		}
	})

	t.Run("owner-scoped admin key", func(t *testing.T) {
		_, scoped := mkKey(`{"name":"acme admin","environment":"live","permissions":["admin"],"admin_scope":{"owner":"org_b"}}`)
		s := newSession(t, n.URL())
		s.signIn(scoped)
		_, page := s.get("/console/keys")
		if strings.Contains(page, "some key") || !strings.Contains(page, "journey") {
			t.Fatalf("a scoped admin sees other owners' keys, or not its own: %s", page)
		}
		if resp, _ := s.get("/console/keys/" + someID); resp.StatusCode != 404 {
			t.Fatalf("another owner's key page: %d", resp.StatusCode)
		}
		if _, page := s.get("/console/activity"); !strings.Contains(page, "limited to one owner") || strings.Contains(page, "table class=\"fleet\"") {
			t.Fatal("a scoped admin sees the fleet-wide dashboard")
		}
		if resp, _ := s.get("/console/checkpoint"); resp.StatusCode != 403 {
			t.Fatalf("a scoped admin downloaded the ledger's checkpoint: %d", resp.StatusCode)
		}
	})
}

// The activity page shows the ledger's newest signed checkpoint, and an
// operator downloads it to keep outside the system.
func TestConsole_ledgerProof(t *testing.T) {
	cfg := nodetest.Config(t.TempDir(), io.Discard)
	cfg.AdminToken, cfg.CheckpointEvery, cfg.CheckpointInterval = testToken, 1, time.Millisecond
	n := nodetest.MustOpenConfig(t, cfg)
	api := &nodetest.Caller{T: t, Base: n.URL(), Token: testToken}
	nodetest.WaitReady(t, api)
	if resp, _ := newSession(t, n.URL()).get("/console/checkpoint"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the checkpoint without a session: %d", resp.StatusCode)
	}
	s := newSession(t, n.URL())
	s.signIn(testToken)
	if _, page := s.get("/console/activity"); !strings.Contains(page, "No checkpoint has been published yet") {
		t.Fatal("an empty ledger shows a checkpoint")
	}
	for i := range 3 {
		if code, _, body := api.Call("POST", "/v1/keys", testToken, fmt.Sprintf(`{"name":"p%d","environment":"live"}`, i)); code != 201 {
			t.Fatalf("create: %d %s", code, body)
		}
	}
	var cp struct {
		Size int64
		Note string
	}
	nodetest.WaitFor(t, 20*time.Second, "a checkpoint of the 3 events", func() bool {
		code, _, body := api.Call("GET", "/v1/audit/checkpoint", testToken, "")
		return code == 200 && json.Unmarshal(body, &cp) == nil && cp.Size == 3
	})
	if _, page := s.get("/console/activity"); !strings.Contains(page, "Ledger proof") || !strings.Contains(page, "3 events, signed by e2e") ||
		!strings.Contains(page, `href="checkpoint"`) {
		t.Fatalf("the activity page: %s", page)
	}
	resp, body := s.get("/console/checkpoint")
	if resp.StatusCode != 200 || body != cp.Note || !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment;") {
		t.Fatalf("download: %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

// Verifier-only nodes serve no console: a router without the admin side
// has none.
func TestConsole_notOnVerifierNodes(t *testing.T) {
	srv := httptest.NewServer(khttp.NewRouter(khttp.RouterOptions{}))
	defer srv.Close()
	for _, p := range []string{"/console/", "/console/signin", "/console/static/console.js"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("%s: %d, want 404", p, resp.StatusCode)
		}
	}
}

// --no-console leaves the console out of an admin node.
func TestConsole_noConsole(t *testing.T) {
	cfg := nodetest.Config(t.TempDir(), io.Discard)
	cfg.AdminToken, cfg.NoConsole = testToken, true
	n := nodetest.MustOpenConfig(t, cfg)
	s := newSession(t, n.URL())
	if resp, _ := s.get("/console/signin"); resp.StatusCode != 404 {
		t.Fatalf("--no-console: /console/signin %d, want 404", resp.StatusCode)
	}
}
