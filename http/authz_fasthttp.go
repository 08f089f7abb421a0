package http

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"unsafe"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/verifier"
	"github.com/valyala/fasthttp"
)

// IsAuthzPath reports whether path is served by the forward-auth endpoint:
// /v1/authz, or /v1/authz/<client path> as Envoy's ext_authz sends it.
func IsAuthzPath(path []byte) bool {
	return string(path) == "/v1/authz" || bytes.HasPrefix(path, authzPrefix)
}

var authzPrefix = []byte("/v1/authz/")

// AuthzFastHTTP is the forward-auth endpoint for a fasthttp server. It
// decides exactly as ServeHTTP does for /v1/authz, and answers refusals
// through the same WriteError. keyledger serve uses it because
// forward auth is a node's whole traffic and net/http's per-request cost
// was most of a node's CPU (see the README's Benchmarks).
//
// fasthttp reuses a request's memory once the handler returns, so every
// string kept beyond the verification (in the KeyUsed event) is copied;
// the presented key is not kept and is read in place.
func (h *VerifierHandler) AuthzFastHTTP(ctx *fasthttp.RequestCtx) {
	hdr := &ctx.Request.Header
	req := verifier.Request{
		Start:      h.v.Start(),
		Key:        bearer(unsafeString(hdr.Peek("Authorization"))),
		Permission: string(hdr.Peek("X-Required-Permission")),
		IP:         fastClientIP(ctx),
		UserAgent:  clipString(hdr.UserAgent(), events.MaxUsedUserAgentLen),
		Method:     method(firstPeek(hdr, "X-Forwarded-Method", "X-Original-Method", ctx.Method())),
		Path:       clipString(firstPeek(hdr, "X-Forwarded-Uri", "X-Original-Uri", nil), events.MaxUsedPathLen),
	}
	if req.Path == "" {
		req.Path = fastClientPath(ctx)
	}
	res := h.v.Verify(&req)
	// The key's memory is fasthttp's again after this handler: make sure
	// nothing refers to it.
	req.Key = ""
	if !res.Valid() {
		fw := fastWriter{ctx: ctx, h: make(http.Header, 4)}
		writeRefusal(&fw, &req, res)
		return
	}
	kh := res.Entry.Headers()
	rh := &ctx.Response.Header
	rh.Set("X-Key-Id", kh.ID[0])
	rh.Set("X-Key-Owner", kh.Owner[0])
	rh.Set("X-Key-Environment", kh.Environment[0])
	ctx.SetStatusCode(http.StatusOK)
}

// unsafeString views b as a string without copying. Only for values that
// do not outlive the handler.
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// clipString copies at most n bytes of b (see events.Clip), so that a
// huge header is not copied whole only to be cut when it is published.
func clipString(b []byte, n int) string {
	if len(b) > n {
		return strings.Clone(events.Clip(unsafeString(b), n))
	}
	return string(b)
}

// firstPeek returns the first of two headers that is set, else def.
func firstPeek(hdr *fasthttp.RequestHeader, a, b string, def []byte) []byte {
	if v := hdr.Peek(a); len(v) > 0 {
		return v
	}
	if v := hdr.Peek(b); len(v) > 0 {
		return v
	}
	return def
}

// method returns the method as a string, without allocating for the
// standard ones.
func method(b []byte) string {
	switch string(b) {
	case http.MethodGet:
		return http.MethodGet
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodHead:
		return http.MethodHead
	case http.MethodOptions:
		return http.MethodOptions
	}
	return string(b)
}

// fastClientIP is clientIP for fasthttp. What it returns is copied: the
// headers' memory is fasthttp's again after the handler.
func fastClientIP(ctx *fasthttp.RequestCtx) string {
	hdr := &ctx.Request.Header
	if ip := forwardedIP(unsafeString(hdr.Peek("X-Forwarded-For")), unsafeString(hdr.Peek("X-Real-Ip"))); ip != "" {
		return strings.Clone(ip)
	}
	return ctx.RemoteIP().String()
}

// fastClientPath is clientPath for fasthttp, copied like fastClientIP.
func fastClientPath(ctx *fasthttp.RequestCtx) string {
	return strings.Clone(authzPath(unsafeString(ctx.RequestURI())))
}

// fastWriter is the http.ResponseWriter WriteError writes a
// refusal through, so that both HTTP stacks answer with the same bytes.
type fastWriter struct {
	ctx   *fasthttp.RequestCtx
	h     http.Header
	wrote bool
}

func (w *fastWriter) Header() http.Header { return w.h }

func (w *fastWriter) WriteHeader(code int) {
	if w.wrote {
		return
	}
	w.wrote = true
	for k, vs := range w.h {
		for _, v := range vs {
			w.ctx.Response.Header.Add(k, v)
		}
	}
	w.ctx.SetStatusCode(code)
}

func (w *fastWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ctx.Write(b)
}

// FastHTTPError answers a request fasthttp could not read (headers larger
// than the read buffer, a body over the limit, a malformed request) with
// the product's error envelope. It is a fasthttp.Server's ErrorHandler.
func FastHTTPError(ctx *fasthttp.RequestCtx, err error) {
	e := &keyledger.Error{Code: keyledger.Invalid, Message: "malformed HTTP request"}
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		e.Reason, e.Message = keyledger.ReasonBodyTooLarge, "request body too large"
	case errors.Is(err, fasthttp.ErrSmallReadBuffer) || errors.As(err, new(*fasthttp.ErrSmallBuffer)):
		e.Reason, e.Message = keyledger.ReasonHeadersTooLarge, "request headers too large"
	}
	abort(ctx, e)
}

// FastHTTPInternalError answers with the internal error envelope, for a
// fasthttp handler that failed (the cause is logged by the caller).
func FastHTTPInternalError(ctx *fasthttp.RequestCtx) {
	abort(ctx, keyledger.Errorf(keyledger.Internal, "internal error"))
}

// abort replaces whatever response was begun with err's envelope, and
// closes the connection after it: the request's state is not trusted.
func abort(ctx *fasthttp.RequestCtx, err error) {
	ctx.Response.Reset()
	fw := fastWriter{ctx: ctx, h: make(http.Header, 2)}
	WriteError(&fw, err)
	ctx.SetConnectionClose()
}
