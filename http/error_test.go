package http_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
	khttp "github.com/keyledger/keyledger/http"
)

// errSecretCause is an internal error whose text must never reach a caller.
var errSecretCause = errors.New("dial tcp 10.0.0.7:4222: password=hunter2 fsk_live_abcdefghijklmnopqrstuvwxyz01231UmKUD")

func TestHTTPStatus(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{keyledger.ErrInvalid, 400},
		{keyledger.ErrUnauthorized, 401},
		{keyledger.ErrForbidden, 403},
		{keyledger.ErrNotFound, 404},
		{keyledger.ErrConflict, 409},
		{keyledger.ErrAlreadyRevoked, 409},
		{&keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyExists}, 409},
		{keyledger.ErrRateLimited, 429},
		{keyledger.ErrUnavailable, 503},
		{keyledger.ErrInternal, 500},
		{&keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonMethodNotAllowed}, 405},
		{&keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge}, 413},
		{&keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonUnsupportedMedia}, 415},
		{&keyledger.Error{Code: keyledger.Invalid, Reason: "some_future_reason"}, 400},
		{&keyledger.Error{Code: "teapot"}, 500},
		{fmt.Errorf("wrapped: %w", keyledger.ErrNotFound), 404},
		{fmt.Errorf("wrapped: %w", &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge}), 413},
		{errSecretCause, 500},
	}
	for _, tt := range tests {
		if got := khttp.HTTPStatus(tt.err); got != tt.want {
			t.Errorf("HTTPStatus(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestWriteError(t *testing.T) {
	const want401 = `{"error":{"code":"unauthorized","message":"Invalid or missing API key"}}` + "\n"
	t.Run("401 is byte-exact", func(t *testing.T) {
		for _, err := range []error{
			keyledger.ErrUnauthorized,
			keyledger.Errorf(keyledger.Unauthorized, "key fsk_live_x is revoked"),
			keyledger.Wrap(keyledger.Unauthorized, errSecretCause, "expired"),
			&keyledger.Error{Code: keyledger.Unauthorized, Reason: "revoked", Message: "revoked"},
			fmt.Errorf("verify: %w", keyledger.ErrUnauthorized),
		} {
			w := httptest.NewRecorder()
			khttp.WriteError(w, err)
			if w.Code != http.StatusUnauthorized {
				t.Errorf("%v: status %d, want 401", err, w.Code)
			}
			if got := w.Body.String(); got != want401 {
				t.Errorf("%v: body %q, want %q", err, got, want401)
			}
			if got := w.Header().Get("WWW-Authenticate"); got != `Bearer realm="keyledger"` {
				t.Errorf("%v: WWW-Authenticate %q", err, got)
			}
			if got := w.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("%v: Content-Type %q", err, got)
			}
			if got := w.Header().Get("Cache-Control"); got != "no-store" {
				t.Errorf("%v: Cache-Control %q", err, got)
			}
		}
		if !strings.Contains(want401, keyledger.UnauthorizedMessage) {
			t.Fatalf("UnauthorizedMessage %q is not the message of a 401", keyledger.UnauthorizedMessage)
		}
	})

	tests := []struct {
		name   string
		err    error
		status int
		code   keyledger.Code
		reason string
		msg    string
	}{
		{"invalid", keyledger.Errorf(keyledger.Invalid, "name is required"), 400, keyledger.Invalid, "", "name is required"},
		{"forbidden", keyledger.Errorf(keyledger.Forbidden, "needs storage:write"), 403, keyledger.Forbidden, "", "needs storage:write"},
		{"not found", keyledger.Errorf(keyledger.NotFound, `no key "k"`), 404, keyledger.NotFound, "", `no key "k"`},
		{"already revoked", &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyRevoked, Message: "already revoked"}, 409, keyledger.Conflict, keyledger.ReasonAlreadyRevoked, "already revoked"},
		{"rate limited", keyledger.Errorf(keyledger.RateLimited, "slow down"), 429, keyledger.RateLimited, "", "slow down"},
		{"unavailable with cause", keyledger.Wrap(keyledger.Unavailable, errSecretCause, "the ledger is unavailable"), 503, keyledger.Unavailable, "", "the ledger is unavailable"},
		{"method not allowed", &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonMethodNotAllowed, Message: "use POST"}, 405, keyledger.Invalid, keyledger.ReasonMethodNotAllowed, "use POST"},
		{"too large", &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge, Message: "too big"}, 413, keyledger.Invalid, keyledger.ReasonBodyTooLarge, "too big"},
		{"media type", &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonUnsupportedMedia, Message: "json only"}, 415, keyledger.Invalid, keyledger.ReasonUnsupportedMedia, "json only"},
		{"plain error", errSecretCause, 500, keyledger.Internal, "", "internal error"},
		{"wrapped plain error", fmt.Errorf("handler: %w", errSecretCause), 500, keyledger.Internal, "", "internal error"},
		{"message with HTML", keyledger.Errorf(keyledger.Invalid, `name "<script>&" is odd`), 400, keyledger.Invalid, "", `name "<script>&" is odd`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			khttp.WriteError(w, tt.err)
			if w.Code != tt.status {
				t.Errorf("status %d, want %d", w.Code, tt.status)
			}
			if got := w.Header().Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type %q", got)
			}
			if got := w.Header().Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control %q", got)
			}
			if got := w.Header().Get("WWW-Authenticate"); got != "" {
				t.Errorf("WWW-Authenticate %q on a %d", got, w.Code)
			}
			body := w.Body.Bytes()
			if !bytes.HasSuffix(body, []byte("}\n")) {
				t.Errorf("body %q does not end in a newline", body)
			}
			if bytes.Contains(body, []byte("hunter2")) || bytes.Contains(body, []byte("fsk_live_")) {
				t.Errorf("body %q leaks the cause", body)
			}
			var env khttp.Envelope
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&env); err != nil {
				t.Fatalf("body %q is not an envelope: %v", body, err)
			}
			want := khttp.Envelope{Error: khttp.EnvelopeError{Code: tt.code, Reason: tt.reason, Message: tt.msg}}
			if env != want {
				t.Errorf("envelope %+v, want %+v", env, want)
			}
			var raw map[string]map[string]any
			if err := json.Unmarshal(body, &raw); err != nil {
				t.Fatal(err)
			}
			if _, has := raw["error"]["reason"]; has != (tt.reason != "") {
				t.Errorf("body %q: reason present = %v, want %v", body, has, tt.reason != "")
			}
			if got := khttp.ErrorBody(tt.err); got != want {
				t.Errorf("ErrorBody = %+v, want %+v", got, want)
			}
		})
	}
}

// An unavailable answer is temporary by definition: it says when to retry.
func TestWriteError_unavailableSaysWhenToRetry(t *testing.T) {
	for _, tc := range []struct {
		err   error
		retry string
	}{
		{keyledger.Errorf(keyledger.Unavailable, "no leader yet"), "1"},
		{keyledger.Errorf(keyledger.Invalid, "bad"), ""},
	} {
		w := httptest.NewRecorder()
		khttp.WriteError(w, tc.err)
		if got := w.Header().Get("Retry-After"); got != tc.retry {
			t.Errorf("%v: Retry-After %q, want %q", tc.err, got, tc.retry)
		}
	}
}
