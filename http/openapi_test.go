package http_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/github"
	"github.com/keyledger/keyledger/github/githubtest"
	khttp "github.com/keyledger/keyledger/http"
	"github.com/keyledger/keyledger/http/openapitest"
	"github.com/keyledger/keyledger/verifier/verifiertest"
)

const openAPIToken = "openapi-test-token-0123456789"

// everything is a router with every option on: verifier, admin API,
// analytics (not up yet), metrics, the console and every leak endpoint.
func everything(t *testing.T) (khttp.RouterOptions, *verifiertest.Fixture) {
	t.Helper()
	f := verifiertest.New(t)
	return khttp.RouterOptions{
		Verifier:         f.Verifier(keyledger.EnvLive, nil),
		AuthzMetaHeaders: []string{"plan"},
		Admin:            admin.New(admin.Config{}),
		Token:            openAPIToken,
		AnalyticsLater:   func() *analytics.Analytics { return nil },
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			io.WriteString(w, "# TYPE up gauge\nup 1\n")
		}),
		Leaks:  khttp.LeakOptions{GitHubKeys: mustGitHubKeys(t), GitLabToken: "gitlab-token-0123456789"},
		Logger: slog.New(slog.DiscardHandler),
	}, f
}

func mustGitHubKeys(t *testing.T) *github.Keys {
	k, err := github.ParseKeys(githubtest.NewSigner(t, "k1").File)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func loadDoc(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := khttp.LoadOpenAPI()
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	return doc
}

// docPath is the document's path for a ServeMux pattern: every path below
// /v1/authz/ is /v1/authz/{rest}.
func docPath(pattern string) string {
	if pattern == "/v1/authz/" {
		return "/v1/authz/{rest}"
	}
	return pattern
}

// operations lists the document's operations as "METHOD path".
func operations(doc *openapi3.T) []string {
	var out []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, method+" "+path)
		}
	}
	sort.Strings(out)
	return out
}

// The document is a valid OpenAPI 3.1 document: references resolve,
// examples match their schemas, operation ids are unique.
func TestOpenAPI_documentIsValid(t *testing.T) {
	doc := loadDoc(t)
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is invalid: %v", err)
	}
	for _, name := range []string{"adminBearer", "apiKey"} {
		if doc.Components.SecuritySchemes[name] == nil {
			t.Errorf("no security scheme %s", name)
		}
	}
	ops := operations(doc)
	t.Logf("%d operations on %d paths", len(ops), doc.Paths.Len())
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			where := method + " " + path
			if op.OperationID == "" || op.Summary == "" || len(op.Tags) == 0 {
				t.Errorf("%s: operationId, summary and tags are required", where)
			}
			if op.Security == nil {
				t.Errorf("%s: say its security (security: [] when there is none)", where)
			}
			// Every operation lists its errors, each in the envelope.
			var errs int
			for code, ref := range op.Responses.Map() {
				if code[0] != '4' && code[0] != '5' {
					continue
				}
				errs++
				mt := ref.Value.Content.Get("application/json")
				if mt == nil || mt.Schema == nil || !strings.HasSuffix(mt.Schema.Ref, "Error") {
					t.Errorf("%s %s: not the error envelope", where, code)
				}
			}
			if errs == 0 {
				t.Errorf("%s: lists no error", where)
			}
			if op.Responses.Status(500) == nil {
				t.Errorf("%s: lists no 500", where)
			}
		}
	}
	// Every error code and reason of the product is in the document.
	enum := func(name string) []any { return doc.Components.Schemas[name].Value.Enum }
	for _, c := range []keyledger.Code{keyledger.Invalid, keyledger.Unauthorized, keyledger.Forbidden, keyledger.NotFound,
		keyledger.Conflict, keyledger.RateLimited, keyledger.Unavailable, keyledger.Internal} {
		if !slices.Contains(enum("ErrorCode"), any(string(c))) {
			t.Errorf("error code %s is not in ErrorCode", c)
		}
	}
	for _, r := range []string{keyledger.ReasonAlreadyRevoked, keyledger.ReasonAlreadyExists, keyledger.ReasonMethodNotAllowed,
		keyledger.ReasonBodyTooLarge, keyledger.ReasonUnsupportedMedia, keyledger.ReasonHeadersTooLarge,
		keyledger.ReasonRevisionMismatch, keyledger.ReasonExposedSecret, keyledger.ReasonQuotaExceeded, keyledger.ReasonCreditsExhausted} {
		if !slices.Contains(enum("ErrorReason"), any(r)) {
			t.Errorf("reason %s is not in ErrorReason", r)
		}
	}
	for _, o := range keyledger.Outcomes() {
		if !slices.Contains(enum("Outcome"), any(o.String())) {
			t.Errorf("outcome %s is not in Outcome", o)
		}
	}
	for _, r := range analytics.Rules() {
		if !slices.Contains(enum("AlertRule"), any(r)) {
			t.Errorf("alert rule %s is not in AlertRule", r)
		}
	}
}

// The route walk: every route the router serves is in the document, and
// every operation of the document is a route the router serves. Only the
// web console is left out, on purpose: it is a browser UI.
func TestOpenAPI_everyRouteDocumented(t *testing.T) {
	o, _ := everything(t)
	served := map[string]bool{}
	for _, r := range khttp.Routes(o) {
		if r.Pattern == "/console/" {
			continue
		}
		served[r.Method+" "+docPath(r.Pattern)] = true
	}
	documented := map[string]bool{}
	for _, op := range operations(loadDoc(t)) {
		documented[op] = true
	}
	for _, r := range sortedKeys(served) {
		if !documented[r] {
			t.Errorf("the router serves %s, which openapi.yaml does not describe", r)
		}
	}
	for _, op := range sortedKeys(documented) {
		if !served[op] {
			t.Errorf("openapi.yaml describes %s, which the router does not serve", op)
		}
	}
	if len(served) < 40 {
		t.Fatalf("only %d routes: %v", len(served), sortedKeys(served))
	}
	// The accounts API by name: dropped from the router and the document
	// together, the walk above would not notice.
	for _, r := range []string{"GET /v1/plans", "POST /v1/plans", "GET /v1/plans/{name}", "PATCH /v1/plans/{name}",
		"GET /v1/owners/{owner}", "PUT /v1/owners/{owner}", "GET /v1/owners/{owner}/quota"} {
		if !served[r] || !documented[r] {
			t.Errorf("%s: served %v, documented %v", r, served[r], documented[r])
		}
	}

	// Each listener's share is a part of the whole, the document on every
	// one of them.
	for _, e := range []khttp.Endpoints{khttp.VerifierEndpoints, khttp.AdminEndpoints} {
		o.Endpoints = e
		routes := khttp.Routes(o)
		if !slices.Contains(routes, khttp.Route{Method: "GET", Pattern: khttp.PathOpenAPI}) {
			t.Errorf("endpoints %d: no %s", e, khttp.PathOpenAPI)
		}
		for _, r := range routes {
			if r.Pattern != "/console/" && !served[r.Method+" "+docPath(r.Pattern)] {
				t.Errorf("endpoints %d serve %s %s, which the whole router does not", e, r.Method, r.Pattern)
			}
		}
	}
}

// The route table is the router's: each route answers (a 401 without a
// token, not the 404 of no endpoint), and every other method of an
// endpoint that checks methods is a 405.
func TestOpenAPI_routesAreTheRoutersOwn(t *testing.T) {
	o, _ := everything(t)
	srv := httptest.NewServer(khttp.NewRouter(o))
	defer srv.Close()
	methods := map[string][]string{}
	for _, r := range khttp.Routes(o) {
		methods[r.Pattern] = append(methods[r.Pattern], r.Method)
	}
	call := func(method, path, token string) (int, khttp.EnvelopeError) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var env khttp.Envelope
		json.NewDecoder(resp.Body).Decode(&env)
		return resp.StatusCode, env.Error
	}
	concrete := func(pattern string) string {
		p := strings.NewReplacer("{id}", "key_0123", "{name}", "pro", "{owner}", "acme").Replace(pattern)
		if strings.HasSuffix(p, "/") {
			p += "x/y"
		}
		return p
	}
	for pattern, ms := range methods {
		if pattern == "/console/" {
			continue
		}
		path := concrete(pattern)
		for _, m := range ms {
			if code, e := call(m, path, ""); code == http.StatusNotFound || code == http.StatusMethodNotAllowed {
				t.Errorf("%s %s (route %s): %d %+v", m, path, pattern, code, e)
			}
		}
		if slices.Equal(ms, []string{"GET", "HEAD"}) && pattern != khttp.PathOpenAPI {
			// Health and metrics answer every method alike; analytics
			// answers 503 to any while it is not up (and checks the
			// method once it is: TestHandlerValidation).
			continue
		}
		for _, m := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
			if slices.Contains(ms, m) || slices.Equal(ms, []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"}) {
				continue
			}
			if code, e := call(m, path, openAPIToken); code != http.StatusMethodNotAllowed || e.Reason != keyledger.ReasonMethodNotAllowed {
				t.Errorf("%s %s, not a method of route %s: %d %+v", m, path, pattern, code, e)
			}
		}
	}
}

// GET /v1/openapi.json answers the document as JSON to anyone, on every
// listener, and it parses back into the same paths and operations.
func TestOpenAPI_served(t *testing.T) {
	o, _ := everything(t)
	want := operations(loadDoc(t))
	for _, e := range []khttp.Endpoints{khttp.AllEndpoints, khttp.VerifierEndpoints, khttp.AdminEndpoints} {
		o.Endpoints = e
		srv := httptest.NewServer(khttp.NewRouter(o))
		resp, err := http.Get(srv.URL + khttp.PathOpenAPI)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		srv.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("endpoints %d: %d %s", e, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		doc, err := openapi3.NewLoader().LoadFromData(b)
		if err != nil {
			t.Fatalf("the served document does not load: %v", err)
		}
		if err := doc.Validate(context.Background()); err != nil {
			t.Fatalf("the served document is invalid: %v", err)
		}
		if got := operations(doc); !slices.Equal(got, want) {
			t.Fatalf("served operations\n%v\nwant\n%v", got, want)
		}
	}
	srv := httptest.NewServer(khttp.NewRouter(o))
	defer srv.Close()
	req, _ := http.NewRequest("DELETE", srv.URL+khttp.PathOpenAPI, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("DELETE: %d Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// recorder is a testing.TB that keeps what Errorf reports.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// The validating transport accepts what the verifier endpoints answer,
// and reports answers and accepted requests the document does not allow —
// without repeating the key.
func TestOpenAPI_transport(t *testing.T) {
	o, f := everything(t)
	secret, _ := f.MustCreate(t, keyledger.EnvLive, []string{"workflows:read"}, nil)
	srv := httptest.NewServer(khttp.NewRouter(o))
	defer srv.Close()
	c := &http.Client{Transport: openapitest.Transport(t, nil)}
	do := func(method, path, key, body string, hdr ...string) int {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		method, path, key, body string
		hdr                     []string
		want                    int
	}{
		{"POST", "/v1/verify", "", `{"key":"` + secret + `","permission":"workflows:read"}`, nil, 200},
		{"POST", "/v1/verify", "", `{"key":"` + secret + `","permission":"storage:write"}`, nil, 403},
		{"POST", "/v1/verify", "", `{"key":"fsk_live_000000000000000000000000000000000000"}`, nil, 401},
		{"POST", "/v1/verify", "", `{"key":`, nil, 400},
		{"GET", "/v1/verify", "", "", nil, 405},
		{"GET", "/v1/authz", secret, "", []string{"X-Required-Permission", "workflows:read"}, 200},
		{"DELETE", "/v1/authz/v2/runs/42?api_key=" + secret, secret, "", nil, 200},
		{"GET", "/v1/authz", "", "", nil, 401},
		{"GET", "/healthz", "", "", nil, 200},
		{"HEAD", "/readyz", "", "", nil, 200},
		{"GET", "/metrics", "", "", nil, 200},
		{"GET", "/v1/openapi.json", "", "", nil, 200},
		{"GET", "/v1/keys", "", "", nil, 401},
		{"GET", "/v1/keys/" + secret, openAPIToken, "", nil, 400},
		{"DELETE", "/v1/keys", openAPIToken, "", nil, 405},
		{"GET", "/v1/usage", openAPIToken, "", nil, 503},
		{"GET", "/nowhere", "", "", nil, 404},
	} {
		if got := do(tc.method, tc.path, tc.key, tc.body, tc.hdr...); got != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, openapitest.Redact(tc.path), got, tc.want)
		}
	}

	v, err := openapitest.Load()
	if err != nil {
		t.Fatal(err)
	}
	jsonHeader := http.Header{"Content-Type": {"application/json"}}
	for _, tc := range []struct {
		name         string
		method, path string
		body         string
		status       int
		header       http.Header
		resp         string
	}{
		{"an error outside the envelope", "GET", "/v1/keys", "", 404, http.Header{"Content-Type": {"text/plain"}}, "404 page not found"},
		{"an error code that does not go with its status", "GET", "/v1/keys/key_1", "", 404, jsonHeader,
			`{"error":{"code":"conflict","message":"no"}}`},
		{"a status the operation does not list", "GET", "/v1/keys/key_1", "", 418, jsonHeader, `{"error":{"code":"internal","message":"x"}}`},
		{"a 401 other than the one", "GET", "/v1/keys", "", 401, http.Header{"Content-Type": {"application/json"}, "Www-Authenticate": {`Bearer realm="keyledger"`}},
			`{"error":{"code":"unauthorized","message":"no such key ` + secret + `"}}`},
		{"a member the document does not know", "POST", "/v1/verify", `{"key":"k"}`, 200, jsonHeader,
			`{"valid":true,"key_id":"key_1","environment":"live","owner":"","permissions":["all"],"expires_at":null,"secret":"` + secret + `"}`},
		{"an accepted request the document refuses", "POST", "/v1/verify", `{"key":"k","extra":1}`, 200, jsonHeader,
			`{"valid":true,"key_id":"key_1","environment":"live","owner":"","permissions":["all"],"expires_at":null}`},
		{"a method the document does not list, accepted", "DELETE", "/v1/keys", "", 200, jsonHeader, `{}`},
		{"an unknown path's JSON error outside the envelope", "GET", "/nowhere", "", 404, jsonHeader, `{"message":"no"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			err := v.Check(req, []byte(tc.body), tc.status, tc.header, []byte(tc.resp))
			if err == nil {
				t.Fatal("not reported")
			}
			if msg := openapitest.Redact(err.Error()); strings.Contains(msg, secret) {
				t.Fatalf("the report repeats the key: %s", msg)
			}
		})
	}
	// The transport reports such an answer, naming the exchange and not
	// the key; a request the server refused is not checked.
	wrong := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/verify" {
			khttp.WriteError(w, &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonUnsupportedMedia, Message: "no"})
			return
		}
		http.Error(w, "no key "+r.URL.Path, http.StatusNotFound)
	}))
	defer wrong.Close()
	rec := &recorder{TB: t}
	c = &http.Client{Transport: openapitest.Transport(rec, nil)}
	for _, path := range []string{"/v1/keys/" + secret, "/v1/verify"} {
		resp, err := c.Post(wrong.URL+path, "text/plain", strings.NewReader(secret))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if len(rec.errs) != 1 || !strings.Contains(rec.errs[0], "POST /v1/keys/REDACTED → 404") || strings.Contains(rec.errs[0], secret) {
		t.Fatalf("reported %q", rec.errs)
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
