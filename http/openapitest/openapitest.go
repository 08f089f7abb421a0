// Package openapitest checks HTTP traffic against keyledger's OpenAPI
// document (http.OpenAPI), for tests: a Transport that validates every
// request a test sends and every answer it gets, so that the document
// cannot drift from what the server does.
package openapitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	keyledger "github.com/keyledger/keyledger"
	khttp "github.com/keyledger/keyledger/http"
)

// Validator checks requests and answers against the document.
type Validator struct {
	doc    *openapi3.T
	router routers.Router
	// errSchema is the error envelope, for answers to paths and methods
	// the document does not describe (they must still be errors in it).
	errSchema *openapi3.Schema
}

// load is the document's Validator, built once: loading, validating and
// routing a document of this size takes a while.
var load = sync.OnceValues(func() (*Validator, error) {
	doc, err := khttp.LoadOpenAPI()
	if err != nil {
		return nil, fmt.Errorf("load the OpenAPI document: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("the OpenAPI document is invalid: %w", err)
	}
	// Route on paths alone: servers name a host for readers, tests
	// listen on loopback ports of their own.
	routed := *doc
	routed.Servers = nil
	r, err := gorillamux.NewRouter(&routed)
	if err != nil {
		return nil, fmt.Errorf("route the OpenAPI document: %w", err)
	}
	ref := doc.Components.Schemas["Error"]
	if ref == nil || ref.Value == nil {
		return nil, errors.New("the OpenAPI document has no Error schema")
	}
	return &Validator{doc: doc, router: r, errSchema: ref.Value}, nil
})

// Load returns the Validator of keyledger's OpenAPI document, which it
// has validated.
func Load() (*Validator, error) { return load() }

// options are the validation options: security is not checked (tests
// send missing and wrong credentials on purpose, and the server answers
// them), every status must be documented.
var (
	requestOptions  = &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}
	responseOptions = &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}
)

// Check validates one exchange: the answer always (an error answer must
// be in the error envelope), the request only when the server accepted it
// (2xx; tests send invalid requests to see them refused). body and
// respBody are the request's and the answer's bodies. Requests below
// /v1/authz/ are checked as /v1/authz/{rest}. The web console
// (/console/) is not described and not checked. A path the document does
// not describe (a gateway's, or no endpoint at all) is checked only for
// an error envelope on a JSON error answer.
func (v *Validator) Check(req *http.Request, body []byte, status int, header http.Header, respBody []byte) error {
	path := req.URL.Path
	if path == "/console" || strings.HasPrefix(path, "/console/") {
		return nil
	}
	r := req.Clone(context.Background())
	if rest, ok := strings.CutPrefix(path, "/v1/authz/"); ok {
		// An OpenAPI path template matches one segment; forward auth
		// takes any depth.
		r.URL.Path = "/v1/authz/" + rest
		r.URL.RawPath = "/v1/authz/" + url.PathEscape(rest)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := v.router.FindRoute(r)
	switch {
	case errors.Is(err, routers.ErrMethodNotAllowed):
		if status >= 200 && status < 300 {
			return fmt.Errorf("the server accepted a method the document does not list for this path")
		}
		return v.checkEnvelope(status, header, respBody)
	case err != nil:
		if status >= 400 && isJSON(header) {
			return v.checkEnvelope(status, header, respBody)
		}
		return nil
	}
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route, Options: requestOptions}
	ctx := context.Background()
	if status >= 200 && status < 300 {
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			return fmt.Errorf("request: %w", err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header,
		Options: responseOptions}
	out.SetBodyBytes(respBody)
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	return nil
}

// checkEnvelope checks an error answer the document has no operation for.
func (v *Validator) checkEnvelope(status int, header http.Header, body []byte) error {
	if status < 400 {
		return fmt.Errorf("status %d outside any documented operation", status)
	}
	if !isJSON(header) {
		return fmt.Errorf("an error answer of Content-Type %q, not the JSON envelope", header.Get("Content-Type"))
	}
	var value any
	if err := json.Unmarshal(body, &value); err != nil {
		return fmt.Errorf("an error answer that is not JSON: %w", err)
	}
	if err := v.errSchema.VisitJSON(value, openapi3.EnableJSONSchema2020()); err != nil {
		return fmt.Errorf("an error answer outside the envelope: %w", err)
	}
	return nil
}

func isJSON(h http.Header) bool {
	ct, _, _ := strings.Cut(h.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(ct), "application/json")
}

// Transport returns a RoundTripper that sends requests with base
// (http.DefaultTransport when nil) and checks each exchange with Check,
// reporting a mismatch with tb.Errorf: the method, the path, the status
// and what does not match, with anything key-shaped redacted. Headers,
// and so credentials, are never reported.
func Transport(tb testing.TB, base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &transport{tb: tb, base: base}
}

type transport struct {
	tb   testing.TB
	base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	v, err := load()
	if err != nil {
		t.tb.Errorf("openapitest: %v", err)
		return nil, err
	}
	var body []byte
	if req.Body != nil {
		body, err = io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		// The request is the caller's: send a copy with the body
		// read above.
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(respBody))
	if err != nil {
		return resp, nil // the caller's read sees the short body; a transport error is not the document's
	}
	if err := v.Check(req, body, resp.StatusCode, resp.Header, respBody); err != nil {
		t.tb.Errorf("openapi: %s %s → %d: %s", req.Method, Redact(req.URL.Path), resp.StatusCode, Redact(clip(err.Error())))
	}
	return resp, nil
}

// Redact replaces every key-shaped value in s (keyledger.FindSecret)
// with REDACTED.
func Redact(s string) string {
	var b strings.Builder
	for {
		start, end, ok := keyledger.FindSecret(s)
		if !ok {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:start])
		b.WriteString(khttp.Redacted)
		s = s[end:]
	}
}

// clip bounds a report: validation errors quote schemas and values.
func clip(s string) string {
	const max = 4 << 10
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
