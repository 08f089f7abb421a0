package http

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// DecodeJSON reads a JSON request body into v: at most limit bytes, of
// content type application/json (or none; application/merge-patch+json,
// RFC 7396's, for PATCH), no unknown fields, one value.
// Its errors are keyledger errors for the envelope.
func DecodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt := strings.TrimSpace(strings.ToLower(strings.SplitN(ct, ";", 2)[0]))
		if mt != "application/json" && !(mt == "application/merge-patch+json" && r.Method == http.MethodPatch) {
			return &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonUnsupportedMedia,
				Message: fmt.Sprintf("content type must be application/json, not %q", mt)}
		}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge,
				Message: fmt.Sprintf("request body exceeds %d bytes", limit)}
		case errors.Is(err, io.EOF):
			return keyledger.Errorf(keyledger.Invalid, "request body is empty; expected a JSON object")
		case errors.As(err, &syn):
			return keyledger.Errorf(keyledger.Invalid, "request body is not valid JSON (at byte %d)", syn.Offset)
		case errors.As(err, &typ):
			return keyledger.Errorf(keyledger.Invalid, "field %q must be of JSON type %s", typ.Field, typ.Type)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			// The name is the caller's: shown only if it is short and
			// not key-shaped (it comes quoted already).
			name := strings.TrimPrefix(err.Error(), "json: unknown field ")
			if len(name) > 66 || keyledger.LooksLikeSecret(name) {
				name = "(name not shown)"
			}
			return keyledger.Errorf(keyledger.Invalid, "unknown field %s", name)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return keyledger.Errorf(keyledger.Invalid, "request body is truncated JSON")
		}
		// Errors of custom unmarshalers (times, environments) are ours
		// or the time package's; both are safe to show.
		var ke *keyledger.Error
		if errors.As(err, &ke) {
			return ke
		}
		var pe *time.ParseError
		if errors.As(err, &pe) {
			return keyledger.Errorf(keyledger.Invalid, "times must be RFC 3339, e.g. 2026-12-31T23:59:59Z (got %s)", keyledger.Quote(strings.Trim(pe.Value, `"`)))
		}
		return keyledger.Errorf(keyledger.Invalid, "cannot decode request body: %v", err)
	}
	// More() is false before a stray '}' or ']', so read a token instead:
	// anything but EOF after the value is trailing data.
	if _, err := dec.Token(); err != io.EOF {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", limit)}
		}
		return keyledger.Errorf(keyledger.Invalid, "request body must hold a single JSON object")
	}
	return nil
}

// WriteJSON writes v as a JSON response with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		WriteError(w, keyledger.Wrap(keyledger.Internal, err, "cannot encode response"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
