package keyledger_test

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

// errSecretCause is an internal error whose text must never reach a caller.
var errSecretCause = errors.New("dial tcp 10.0.0.7:4222: password=hunter2 fsk_live_abcdefghijklmnopqrstuvwxyz01231UmKUD")

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

func TestErrorCode(t *testing.T) {
	tests := []struct {
		err  error
		want keyledger.Code
	}{
		{nil, ""},
		{errSecretCause, keyledger.Internal},
		{io.EOF, keyledger.Internal},
		{keyledger.ErrNotFound, keyledger.NotFound},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", keyledger.ErrRateLimited)), keyledger.RateLimited},
		{keyledger.Wrap(keyledger.Unavailable, errSecretCause, "down"), keyledger.Unavailable},
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
		{errSecretCause, "internal error"},
		{fmt.Errorf("context: %w", errSecretCause), "internal error"},
		{keyledger.Wrap(keyledger.Unavailable, errSecretCause, "the ledger is unavailable"), "the ledger is unavailable"},
		{keyledger.Wrap(keyledger.Internal, errSecretCause, ""), "internal error"},
		{keyledger.Errorf(keyledger.Invalid, "name is required"), "name is required"},
		{fmt.Errorf("outer %v: %w", errSecretCause, keyledger.Errorf(keyledger.NotFound, "no key")), "no key"},
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
