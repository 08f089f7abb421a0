package keyledger

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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
)

// httpStatus is the one table from error kinds to HTTP statuses. A reason
// listed in reasonStatus overrides its code's status.
var httpStatus = map[Code]int{
	Invalid:      http.StatusBadRequest,
	Unauthorized: http.StatusUnauthorized,
	Forbidden:    http.StatusForbidden,
	NotFound:     http.StatusNotFound,
	Conflict:     http.StatusConflict,
	RateLimited:  http.StatusTooManyRequests,
	Unavailable:  http.StatusServiceUnavailable,
	Internal:     http.StatusInternalServerError,
}

var reasonStatus = map[string]int{
	ReasonMethodNotAllowed: http.StatusMethodNotAllowed,
	ReasonBodyTooLarge:     http.StatusRequestEntityTooLarge,
	ReasonUnsupportedMedia: http.StatusUnsupportedMediaType,
	ReasonHeadersTooLarge:  http.StatusRequestHeaderFieldsTooLarge,
}

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

// HTTPStatus returns the HTTP status for err.
func HTTPStatus(err error) int {
	var e *Error
	if errors.As(err, &e) {
		if s, ok := reasonStatus[e.Reason]; ok {
			return s
		}
		if s, ok := httpStatus[e.Code]; ok {
			return s
		}
	}
	return http.StatusInternalServerError
}

// Envelope is the JSON body of every error response:
// {"error":{"code":"…","message":"…"}}.
type Envelope struct {
	Error EnvelopeError `json:"error"`
}

// EnvelopeError is the inner object of an Envelope.
type EnvelopeError struct {
	Code    Code   `json:"code"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message"`
}

// ErrorBody returns the envelope for err.
func ErrorBody(err error) Envelope {
	var reason string
	var e *Error
	if errors.As(err, &e) {
		reason = e.Reason
	}
	return Envelope{Error: EnvelopeError{Code: ErrorCode(err), Reason: reason, Message: ErrorMessage(err)}}
}

// ErrorFromResponse is the client side of WriteError: it turns an HTTP
// error answer into an *Error with the envelope's code, reason and message.
// An answer without an envelope (a proxy's error page) gets the code whose
// status it has, by the same table, and a message naming the status; its
// body is never shown, as it is not ours to vouch for.
func ErrorFromResponse(status int, body []byte) *Error {
	var env Envelope
	if json.Unmarshal(body, &env) == nil && env.Error.Code != "" {
		return &Error{Code: env.Error.Code, Reason: env.Error.Reason, Message: env.Error.Message}
	}
	return &Error{Code: codeForStatus(status), Message: fmt.Sprintf("HTTP %d %s without an error envelope", status, http.StatusText(status))}
}

// codeForStatus inverts httpStatus and reasonStatus. A 5xx it does not
// name (502, 504: a proxy in between) means the service is unavailable.
func codeForStatus(status int) Code {
	for _, s := range reasonStatus {
		if s == status {
			return Invalid // every reason with its own status refines invalid_request
		}
	}
	for c, s := range httpStatus {
		if s == status && c != Internal {
			return c
		}
	}
	if status >= 500 && status != http.StatusInternalServerError {
		return Unavailable
	}
	return Internal
}

// unauthorizedBody is precomputed: every 401 is byte-for-byte the same, so
// responses reveal nothing about why a key was refused.
var unauthorizedBody = []byte(`{"error":{"code":"unauthorized","message":"Invalid or missing API key"}}` + "\n")

// UnauthorizedMessage is the only message a 401 ever carries.
const UnauthorizedMessage = "Invalid or missing API key"

// WriteError writes err as an error envelope with its HTTP status.
func WriteError(w http.ResponseWriter, err error) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["Cache-Control"] = noStore
	if ErrorCode(err) == Unauthorized {
		// Gateways pass WWW-Authenticate through to clients; RFC 6750 asks for it.
		h["Www-Authenticate"] = bearerChallenge
		w.WriteHeader(http.StatusUnauthorized)
		w.Write(unauthorizedBody)
		return
	}
	status := HTTPStatus(err)
	b, _ := json.Marshal(ErrorBody(err))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

var (
	jsonContentType = []string{"application/json"}
	noStore         = []string{"no-store"}
	bearerChallenge = []string{`Bearer realm="keyledger"`}
)
