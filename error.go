package keyledger

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Code is one of a few stable error kinds. Clients branch on it; it never
// changes meaning between versions.
type Code string

// The error codes. Each maps to one HTTP status in httpStatus.
const (
	Invalid      Code = "invalid_request"
	Unauthorized Code = "unauthorized"
	Forbidden    Code = "forbidden"
	NotFound     Code = "not_found"
	Conflict     Code = "conflict"
	RateLimited  Code = "rate_limited"
	Unavailable  Code = "unavailable"
	Internal     Code = "internal"
)

// Reasons refine a code where a client needs to tell cases apart without
// parsing messages. They are as stable as codes.
const (
	ReasonAlreadyRevoked   = "already_revoked"
	ReasonAlreadyExists    = "already_exists"
	ReasonMethodNotAllowed = "method_not_allowed"
	ReasonBodyTooLarge     = "body_too_large"
	ReasonUnsupportedMedia = "unsupported_media_type"
	ReasonHeadersTooLarge  = "headers_too_large"
	// ReasonRevisionMismatch: an If-Match named a revision the key has
	// moved past (HTTP 412).
	ReasonRevisionMismatch = "revision_mismatch"
	// ReasonQuotaExceeded: the owner's plan quota for the month is spent
	// (HTTP 429 until the month's reset).
	ReasonQuotaExceeded = "quota_exceeded"
	// ReasonCreditsExhausted: the key's credits are spent (HTTP 429 until
	// its refill, if it has one).
	ReasonCreditsExhausted = "credits_exhausted"
)

// Error is the one error type of keyledger. Message is safe to show to the
// caller; Err (the cause) is for logs and never leaves the process.
type Error struct {
	Code    Code
	Reason  string
	Message string
	Err     error
}

// Errorf returns an *Error of the given code with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error of the given code whose cause is err. The message
// shown to callers is msg, never err's text, which may carry internals.
func Wrap(code Code, err error, msg string) *Error {
	return &Error{Code: code, Message: msg, Err: err}
}

// Error implements error.
func (e *Error) Error() string {
	s := string(e.Code)
	if e.Reason != "" {
		s += "/" + e.Reason
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, keyledger.ErrNotFound) match any *Error with that
// code (and reason, if the target names one).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok || t.Message != "" || t.Err != nil {
		return false
	}
	return t.Code == e.Code && (t.Reason == "" || t.Reason == e.Reason)
}

// Sentinels for errors.Is.
var (
	ErrInvalid        = &Error{Code: Invalid}
	ErrUnauthorized   = &Error{Code: Unauthorized}
	ErrForbidden      = &Error{Code: Forbidden}
	ErrNotFound       = &Error{Code: NotFound}
	ErrConflict       = &Error{Code: Conflict}
	ErrAlreadyRevoked = &Error{Code: Conflict, Reason: ReasonAlreadyRevoked}
	ErrRateLimited    = &Error{Code: RateLimited}
	ErrUnavailable    = &Error{Code: Unavailable}
	ErrInternal       = &Error{Code: Internal}
)

// ErrorCode returns the code of err: its own if it is (or wraps) an *Error,
// else Internal. A nil error has no code.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Internal
}

// ErrorMessage returns the caller-safe message of err. Errors that are not
// *Error are internal and get a generic message; an *Error without a
// message gets its code's.
func ErrorMessage(err error) string {
	var e *Error
	if !errors.As(err, &e) {
		return defaultMessage[Internal]
	}
	if e.Message != "" {
		return e.Message
	}
	if e.Code == Unauthorized {
		return UnauthorizedMessage
	}
	if m, ok := defaultMessage[e.Code]; ok {
		return m
	}
	return defaultMessage[Internal]
}

var defaultMessage = map[Code]string{
	Invalid:     "invalid request",
	Forbidden:   "forbidden",
	NotFound:    "not found",
	Conflict:    "conflict",
	RateLimited: "rate limit exceeded",
	Unavailable: "service unavailable",
	Internal:    "internal error",
}

// Quote quotes a caller-supplied value for an error message, unless it is
// long or looks like a key: callers paste secrets into the wrong fields, and
// an error must never send one back (or into a log).
func Quote(s string) string {
	if len(s) > 64 || strings.Contains(s, "_live_") || strings.Contains(s, "_test_") {
		return "(value not shown)"
	}
	return strconv.Quote(s)
}

// UnauthorizedMessage is the only message a 401 ever carries: every
// refused key gets the same answer, so answers reveal nothing about why.
const UnauthorizedMessage = "Invalid or missing API key"

// Describe renders err for a person at a terminal: code, reason and
// message, and the cause unless the error is internal (an internal cause
// is for the log of the process that had it, never for its callers).
func Describe(err error) string {
	var e *Error
	if errors.As(err, &e) {
		s := string(e.Code)
		if e.Reason != "" {
			s += " (" + e.Reason + ")"
		}
		if e.Message != "" {
			s += ": " + e.Message
		}
		if e.Err != nil && e.Code != Internal {
			s += ": " + e.Err.Error()
		}
		return s
	}
	return err.Error()
}
