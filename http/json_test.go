package http

import (
	"encoding/json"
	"errors"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/admin"

	keyledger "github.com/keyledger/keyledger"
)

// createRequest is the admin API's create body, the body DecodeJSON
// decodes most.
type createRequest = admin.CreateRequest

// decode runs DecodeJSON on a request with body and content type ct ("" for
// none), as a handler would.
func decode(tb testing.TB, body, ct string, limit int64) (createRequest, error) {
	tb.Helper()
	r := httptest.NewRequest(http.MethodPost, "/v1/keys", strings.NewReader(body))
	if ct != "" {
		r.Header.Set("Content-Type", ct)
	}
	var v createRequest
	err := DecodeJSON(httptest.NewRecorder(), r, limit, &v)
	return v, err
}

func TestDecodeJSON(t *testing.T) {
	const limit = 256
	exp := time.Date(2026, 12, 31, 23, 59, 59, 0, time.UTC)
	valid := `{"name":"ci","environment":"test","permissions":["storage:read"],"owner":"acme","expires_at":"2026-12-31T23:59:59Z","rate_limit":{"per_second":10,"burst":20}}`
	wantValid := createRequest{Name: "ci", Environment: keyledger.EnvTest, Permissions: []string{"storage:read"}, Owner: "acme",
		ExpiresAt: &exp, RateLimit: &keyledger.RateLimit{PerSecond: 10, Burst: 20}}

	accepted := []struct {
		name, body, ct string
		want           createRequest
	}{
		{"full", valid, "application/json", wantValid},
		{"no content type", `{"name":"ci"}`, "", createRequest{Name: "ci"}},
		{"charset parameter", `{"name":"ci"}`, "application/json; charset=utf-8", createRequest{Name: "ci"}},
		{"upper-case media type", `{"name":"ci"}`, "Application/JSON", createRequest{Name: "ci"}},
		{"trailing whitespace", "{\"name\":\"ci\"}\n\t ", "application/json", createRequest{Name: "ci"}},
		{"empty object", `{}`, "application/json", createRequest{}},
	}
	for _, tt := range accepted {
		t.Run("accepts "+tt.name, func(t *testing.T) {
			got, err := decode(t, tt.body, tt.ct, limit)
			if err != nil {
				t.Fatalf("DecodeJSON(%q): %v", tt.body, err)
			}
			gj, _ := json.Marshal(got)
			wj, _ := json.Marshal(tt.want)
			if string(gj) != string(wj) {
				t.Fatalf("decoded %s, want %s", gj, wj)
			}
		})
	}

	rejected := []struct {
		name, body, ct string
		status         int
		reason         string
		msgHas         string // the message mentions this
	}{
		{"not JSON", `name=ci`, "application/json", 400, "", "not valid JSON"},
		{"syntax error", `{"name" "ci"}`, "application/json", 400, "", "not valid JSON"},
		{"truncated", `{"name":"ci"`, "application/json", 400, "", "truncated"},
		{"unknown field", `{"name":"ci","nmae":"x"}`, "application/json", 400, "", "nmae"},
		{"unknown nested field", `{"rate_limit":{"per_second":1,"burst":1,"extra":1}}`, "application/json", 400, "", "extra"},
		{"key-shaped unknown field", `{"fsk_live_OdQTOCTFHcsMURTIbMJeubMBSmrlYD1tzeqP":1}`, "application/json", 400, "", "(name not shown)"},
		{"two values", `{"name":"a"} {"name":"b"}`, "application/json", 400, "", "single JSON object"},
		{"trailing garbage", `{"name":"a"} x`, "application/json", 400, "", ""},
		{"trailing brace", `{"name":"a"}}`, "application/json", 400, "", ""},
		{"trailing bracket", `{"name":"a"}]`, "application/json", 400, "", ""},
		{"too big", `{"name":"` + strings.Repeat("x", limit) + `"}`, "application/json", 413, keyledger.ReasonBodyTooLarge, "256"},
		{"too big, leading whitespace, no content type", strings.Repeat(" ", limit+1) + `{}`, "", 413, keyledger.ReasonBodyTooLarge, ""},
		{"trailing garbage past the limit", `{"name":"a"}` + strings.Repeat(" ", limit) + `x`, "application/json", 413, keyledger.ReasonBodyTooLarge, ""},
		{"text/plain", `{"name":"ci"}`, "text/plain", 415, keyledger.ReasonUnsupportedMedia, "text/plain"},
		{"form", `name=ci`, "application/x-www-form-urlencoded", 415, keyledger.ReasonUnsupportedMedia, ""},
		{"json lookalike", `{"name":"ci"}`, "application/jsonx", 415, keyledger.ReasonUnsupportedMedia, ""},
		{"empty body", ``, "application/json", 400, "", "empty"},
		{"whitespace body", "  \n", "application/json", 400, "", "empty"},
		{"wrong type of field", `{"name":5}`, "application/json", 400, "", "name"},
		{"wrong type of nested field", `{"rate_limit":{"per_second":1,"burst":"many"}}`, "application/json", 400, "", "burst"},
		{"array instead of object", `[]`, "application/json", 400, "", ""},
		{"bad environment", `{"environment":"prod"}`, "application/json", 400, "", "environment"},
		{"bad time", `{"expires_at":"tomorrow"}`, "application/json", 400, "", "RFC 3339"},
	}
	for _, tt := range rejected {
		t.Run("rejects "+tt.name, func(t *testing.T) {
			_, err := decode(t, tt.body, tt.ct, limit)
			if err == nil {
				t.Fatalf("DecodeJSON(%q) accepted the body", tt.body)
			}
			var ke *keyledger.Error
			if !errors.As(err, &ke) {
				t.Fatalf("error %T %v is not a *keyledger.Error", err, err)
			}
			if ke.Code != keyledger.Invalid || ke.Reason != tt.reason {
				t.Errorf("code/reason %s/%s, want %s/%s", ke.Code, ke.Reason, keyledger.Invalid, tt.reason)
			}
			if got := HTTPStatus(err); got != tt.status {
				t.Errorf("HTTPStatus = %d, want %d", got, tt.status)
			}
			if msg := keyledger.ErrorMessage(err); msg == "" || msg == "internal error" || !strings.Contains(msg, tt.msgHas) {
				t.Errorf("message %q, want one mentioning %q", msg, tt.msgHas)
			}
		})
	}
}

// TestDecodeJSON_Hostile feeds bodies carrying a secret-looking value in
// every position: decoding must fail cleanly as invalid_request, never panic
// and never be reported as an internal error.
func TestDecodeJSON_Hostile(t *testing.T) {
	secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, mrand.NewChaCha8([32]byte{21}))
	if err != nil {
		t.Fatal(err)
	}
	bodies := []string{
		`{"` + secret + `":1}`,
		`{"environment":"` + secret + `"}`,
		`{"expires_at":"` + secret + `"}`,
		`{"name":["` + secret + `"]}`,
		`{"rate_limit":"` + secret + `"}`,
		`{"permissions":"` + secret + `"}`,
		`"` + secret + `"`,
		secret,
		`{"name":"` + secret,
		`{"name":"\x` + secret + `"}`,
		"{\"name\":\"\xff\xfe\"}" + secret,
		`{"rate_limit":{"per_second":1e999,"burst":1}}`,
		`{"rate_limit":{"per_second":1,"burst":99999999999999999999}}`,
		strings.Repeat("[", 10000),
		strings.Repeat(`{"name":`, 5000),
	}
	for i, body := range bodies {
		_, err := decode(t, body, "application/json", 64<<10)
		if keyledger.ErrorCode(err) != keyledger.Invalid {
			t.Errorf("body %d %.60q: error %v, want invalid_request", i, body, err)
			continue
		}
		if got := HTTPStatus(err); got != http.StatusBadRequest {
			t.Errorf("body %d: status %d, want 400", i, got)
		}
		// The message goes back to the sender of the secret, but through
		// proxies and client logs: an error never echoes a key.
		if strings.Contains(keyledger.ErrorMessage(err), secret) || strings.Contains(keyledger.ErrorMessage(err), secret[9:25]) {
			t.Errorf("body %d: message echoes the secret: %q", i, keyledger.ErrorMessage(err))
		}
	}
}

func TestWriteJSON(t *testing.T) {
	w := httptest.NewRecorder()
	WriteJSON(w, http.StatusCreated, map[string]string{"id": "key_1", "html": "<&>"})
	if w.Code != http.StatusCreated {
		t.Fatalf("status %d", w.Code)
	}
	if got := w.Body.String(); got != `{"html":"\u003c\u0026\u003e","id":"key_1"}`+"\n" {
		t.Fatalf("body %q", got)
	}
	if w.Header().Get("Content-Type") != "application/json" || w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("headers %v", w.Header())
	}

	w = httptest.NewRecorder()
	WriteJSON(w, http.StatusOK, map[string]any{"f": func() {}})
	if w.Code != http.StatusInternalServerError || keyledger.ErrorCode(nil) != "" {
		t.Fatalf("unencodable value: status %d, want 500", w.Code)
	}
	var env Envelope
	if err := json.Unmarshal(w.Body.Bytes(), &env); err != nil || env.Error.Code != keyledger.Internal {
		t.Fatalf("unencodable value: body %q (%v)", w.Body.String(), err)
	}
	if strings.Contains(w.Body.String(), "func") {
		t.Fatalf("body %q leaks the encoder's error", w.Body.String())
	}
}
