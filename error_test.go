package keyledger_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

// secretCause is an internal error whose text must never reach a caller.
var secretCause = errors.New("dial tcp 10.0.0.7:4222: password=hunter2 fsk_live_abcdefghijklmnopqrstuvwxyz01231UmKUD")

func TestError_Error(t *testing.T) {
	tests := []struct {
		err  *keyledger.Error
		want string
	}{
		{keyledger.ErrNotFound, "not_found"},
		{keyledger.ErrAlreadyRevoked, "conflict/already_revoked"},
		{keyledger.Errorf(keyledger.Invalid, "bad %s", "thing"), "invalid_request: bad thing"},
		{keyledger.Wrap(keyledger.Unavailable, io.EOF, "down"), "unavailable: down: EOF"},
		{&keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge, Message: "big"}, "invalid_request/body_too_large: big"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestError_Is(t *testing.T) {
	revoked := &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyRevoked, Message: "key k is already revoked"}
	withMessage := &keyledger.Error{Code: keyledger.Conflict, Message: "the key was changed concurrently"}
	tests := []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"code match", keyledger.Errorf(keyledger.NotFound, "no key"), keyledger.ErrNotFound, true},
		{"code mismatch", keyledger.Errorf(keyledger.NotFound, "no key"), keyledger.ErrConflict, false},
		{"sentinel itself", keyledger.ErrInvalid, keyledger.ErrInvalid, true},
		{"wrapped by fmt", fmt.Errorf("create: %w", keyledger.Errorf(keyledger.Forbidden, "no")), keyledger.ErrForbidden, true},
		{"reason matches reason", revoked, keyledger.ErrAlreadyRevoked, true},
		{"reason matches code", revoked, keyledger.ErrConflict, true},
		{"no reason does not match reason", keyledger.Errorf(keyledger.Conflict, "busy"), keyledger.ErrAlreadyRevoked, false},
		{"other reason does not match", &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyExists}, keyledger.ErrAlreadyRevoked, false},
		{"reason on other code", &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonAlreadyRevoked}, keyledger.ErrAlreadyRevoked, false},
		{"target with a message is not a sentinel", keyledger.Errorf(keyledger.Conflict, "other"), withMessage, false},
		{"target with a message matches itself", withMessage, withMessage, true},
		{"cause is reachable", keyledger.Wrap(keyledger.Internal, io.ErrUnexpectedEOF, "x"), io.ErrUnexpectedEOF, true},
		{"plain error", errors.New("boom"), keyledger.ErrInternal, false},
		{"nil", nil, keyledger.ErrNotFound, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errors.Is(tt.err, tt.target); got != tt.want {
				t.Fatalf("errors.Is(%v, %v) = %v, want %v", tt.err, tt.target, got, tt.want)
			}
		})
	}
}

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
		{secretCause, 500},
	}
	for _, tt := range tests {
		if got := keyledger.HTTPStatus(tt.err); got != tt.want {
			t.Errorf("HTTPStatus(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestErrorCode(t *testing.T) {
	tests := []struct {
		err  error
		want keyledger.Code
	}{
		{nil, ""},
		{secretCause, keyledger.Internal},
		{io.EOF, keyledger.Internal},
		{keyledger.ErrNotFound, keyledger.NotFound},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", keyledger.ErrRateLimited)), keyledger.RateLimited},
		{keyledger.Wrap(keyledger.Unavailable, secretCause, "down"), keyledger.Unavailable},
	}
	for _, tt := range tests {
		if got := keyledger.ErrorCode(tt.err); got != tt.want {
			t.Errorf("ErrorCode(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{secretCause, "internal error"},
		{fmt.Errorf("context: %w", secretCause), "internal error"},
		{keyledger.Wrap(keyledger.Unavailable, secretCause, "the ledger is unavailable"), "the ledger is unavailable"},
		{keyledger.Wrap(keyledger.Internal, secretCause, ""), "internal error"},
		{keyledger.Errorf(keyledger.Invalid, "name is required"), "name is required"},
		{fmt.Errorf("outer %v: %w", secretCause, keyledger.Errorf(keyledger.NotFound, "no key")), "no key"},
	}
	for _, tt := range tests {
		got := keyledger.ErrorMessage(tt.err)
		if got != tt.want {
			t.Errorf("ErrorMessage(%v) = %q, want %q", tt.err, got, tt.want)
		}
		if strings.Contains(got, "hunter2") || strings.Contains(got, "10.0.0.7") {
			t.Errorf("ErrorMessage(%v) leaks the cause: %q", tt.err, got)
		}
	}
}

func TestWriteError(t *testing.T) {
	const want401 = `{"error":{"code":"unauthorized","message":"Invalid or missing API key"}}` + "\n"
	t.Run("401 is byte-exact", func(t *testing.T) {
		for _, err := range []error{
			keyledger.ErrUnauthorized,
			keyledger.Errorf(keyledger.Unauthorized, "key fsk_live_x is revoked"),
			keyledger.Wrap(keyledger.Unauthorized, secretCause, "expired"),
			&keyledger.Error{Code: keyledger.Unauthorized, Reason: "revoked", Message: "revoked"},
			fmt.Errorf("verify: %w", keyledger.ErrUnauthorized),
		} {
			w := httptest.NewRecorder()
			keyledger.WriteError(w, err)
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
		{"unavailable with cause", keyledger.Wrap(keyledger.Unavailable, secretCause, "the ledger is unavailable"), 503, keyledger.Unavailable, "", "the ledger is unavailable"},
		{"method not allowed", &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonMethodNotAllowed, Message: "use POST"}, 405, keyledger.Invalid, keyledger.ReasonMethodNotAllowed, "use POST"},
		{"too large", &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge, Message: "too big"}, 413, keyledger.Invalid, keyledger.ReasonBodyTooLarge, "too big"},
		{"media type", &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonUnsupportedMedia, Message: "json only"}, 415, keyledger.Invalid, keyledger.ReasonUnsupportedMedia, "json only"},
		{"plain error", secretCause, 500, keyledger.Internal, "", "internal error"},
		{"wrapped plain error", fmt.Errorf("handler: %w", secretCause), 500, keyledger.Internal, "", "internal error"},
		{"message with HTML", keyledger.Errorf(keyledger.Invalid, `name "<script>&" is odd`), 400, keyledger.Invalid, "", `name "<script>&" is odd`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			keyledger.WriteError(w, tt.err)
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
			var env keyledger.Envelope
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&env); err != nil {
				t.Fatalf("body %q is not an envelope: %v", body, err)
			}
			want := keyledger.Envelope{Error: keyledger.EnvelopeError{Code: tt.code, Reason: tt.reason, Message: tt.msg}}
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
			if got := keyledger.ErrorBody(tt.err); got != want {
				t.Errorf("ErrorBody = %+v, want %+v", got, want)
			}
		})
	}
}

func TestErrorFromResponse(t *testing.T) {
	// Every error WriteError sends comes back with its code and reason.
	for _, e := range []*keyledger.Error{
		keyledger.Errorf(keyledger.Invalid, "bad"), keyledger.ErrUnauthorized, keyledger.Errorf(keyledger.Forbidden, "no"),
		keyledger.Errorf(keyledger.NotFound, "gone"), {Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyRevoked, Message: "r"},
		keyledger.Errorf(keyledger.RateLimited, "slow"), keyledger.Errorf(keyledger.Unavailable, "down"),
		{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge, Message: "big"},
	} {
		w := httptest.NewRecorder()
		keyledger.WriteError(w, e)
		got := keyledger.ErrorFromResponse(w.Code, w.Body.Bytes())
		if got.Code != e.Code || got.Reason != e.Reason {
			t.Errorf("%v came back as %v", e, got)
		}
	}
	// Without an envelope the status decides, and the body is not shown.
	for status, want := range map[int]keyledger.Code{
		401: keyledger.Unauthorized, 403: keyledger.Forbidden, 404: keyledger.NotFound, 409: keyledger.Conflict,
		413: keyledger.Invalid, 415: keyledger.Invalid, 429: keyledger.RateLimited, 500: keyledger.Internal,
		502: keyledger.Unavailable, 503: keyledger.Unavailable, 504: keyledger.Unavailable,
	} {
		got := keyledger.ErrorFromResponse(status, []byte("<html>secret page</html>"))
		if got.Code != want || strings.Contains(got.Message, "secret") {
			t.Errorf("status %d: %v, want %s", status, got, want)
		}
	}
}
