package http

import (
	"encoding/json"
	"errors"
	"net/http"

	keyledger "github.com/keyledger/keyledger"
)

// httpStatus is the one table from error kinds to HTTP statuses. A reason
// listed in reasonStatus overrides its code's status.
var httpStatus = map[keyledger.Code]int{
	keyledger.Invalid:      http.StatusBadRequest,
	keyledger.Unauthorized: http.StatusUnauthorized,
	keyledger.Forbidden:    http.StatusForbidden,
	keyledger.NotFound:     http.StatusNotFound,
	keyledger.Conflict:     http.StatusConflict,
	keyledger.RateLimited:  http.StatusTooManyRequests,
	keyledger.Unavailable:  http.StatusServiceUnavailable,
	keyledger.Internal:     http.StatusInternalServerError,
}

var reasonStatus = map[string]int{
	keyledger.ReasonMethodNotAllowed: http.StatusMethodNotAllowed,
	keyledger.ReasonBodyTooLarge:     http.StatusRequestEntityTooLarge,
	keyledger.ReasonUnsupportedMedia: http.StatusUnsupportedMediaType,
	keyledger.ReasonHeadersTooLarge:  http.StatusRequestHeaderFieldsTooLarge,
	keyledger.ReasonRevisionMismatch: http.StatusPreconditionFailed,
}

// HTTPStatus returns the HTTP status for err.
func HTTPStatus(err error) int {
	var e *keyledger.Error
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
	Code    keyledger.Code `json:"code"`
	Reason  string         `json:"reason,omitempty"`
	Message string         `json:"message"`
}

// ErrorBody returns the envelope for err.
func ErrorBody(err error) Envelope {
	var reason string
	var e *keyledger.Error
	if errors.As(err, &e) {
		reason = e.Reason
	}
	return Envelope{Error: EnvelopeError{Code: keyledger.ErrorCode(err), Reason: reason, Message: keyledger.ErrorMessage(err)}}
}

// CodeForStatus inverts the status table, for clients reading an answer
// that carries no envelope. A 5xx it does not
// name (502, 504: a proxy in between) means the service is unavailable.
func CodeForStatus(status int) keyledger.Code {
	for _, s := range reasonStatus {
		if s == status {
			return keyledger.Invalid // every reason with its own status refines invalid_request
		}
	}
	for c, s := range httpStatus {
		if s == status && c != keyledger.Internal {
			return c
		}
	}
	if status >= 500 && status != http.StatusInternalServerError {
		return keyledger.Unavailable
	}
	return keyledger.Internal
}

// unauthorizedBody is precomputed: every 401 is byte-for-byte the same, so
// responses reveal nothing about why a key was refused.
var unauthorizedBody = []byte(`{"error":{"code":"unauthorized","message":"Invalid or missing API key"}}` + "\n")

// WriteError writes err as an error envelope with its HTTP status.
func WriteError(w http.ResponseWriter, err error) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["Cache-Control"] = noStore
	if keyledger.ErrorCode(err) == keyledger.Unauthorized {
		// Gateways pass WWW-Authenticate through to clients; RFC 6750 asks for it.
		h["Www-Authenticate"] = bearerChallenge
		w.WriteHeader(http.StatusUnauthorized)
		w.Write(unauthorizedBody)
		return
	}
	status := HTTPStatus(err)
	b, _ := json.Marshal(ErrorBody(err))
	if status == http.StatusServiceUnavailable && h.Get("Retry-After") == "" {
		// Unavailable is temporary by definition (no leader yet, a node
		// catching up): say when to try again.
		h["Retry-After"] = retryAfterOne
	}
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

var (
	jsonContentType = []string{"application/json"}
	noStore         = []string{"no-store"}
	retryAfterOne   = []string{"1"}
	bearerChallenge = []string{`Bearer realm="keyledger"`}
)
