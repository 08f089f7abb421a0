package http

import (
	"bytes"
	"errors"
	"net/http"
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
// string kept beyond the verification (in the KeyUsed event) is copied,
// all into one allocation; the presented key is not kept and is read in
// place.
func (h *VerifierHandler) AuthzFastHTTP(ctx *fasthttp.RequestCtx) {
	start := h.v.Start()
	hdr := &ctx.Request.Header
	o := h.proxies.fastOriginOf(ctx)
	perm := hdr.PeekCanonical(keyRequiredPermission)
	ua := clip(hdr.UserAgent(), events.MaxUsedUserAgentLen)
	path := clip(o.path, events.MaxUsedPathLen)
	m, stdMethod := method(o.method)
	cost, err := parseCost(unsafeString(hdr.PeekCanonical(keyKeyCost)))
	if err != nil {
		fw := fastWriter{ctx: ctx, h: make(http.Header, 4)}
		WriteError(&fw, err)
		return
	}

	// One buffer holds every copied string: they live exactly as long as
	// the event that refers to them.
	n := len(perm) + len(ua) + maxIPText + len(path)
	if !stdMethod {
		n += len(o.method)
	}
	var own ownStrings
	own.buf = make([]byte, 0, n)
	req := verifier.Request{
		Start:      start,
		Cost:       cost,
		Key:        bearer(unsafeString(hdr.PeekCanonical(keyAuthorization))),
		Permission: own.copy(perm),
		IP:         own.ip(o),
		UserAgent:  own.copy(ua),
		Method:     m,
	}
	if !stdMethod {
		req.Method = own.copy(o.method)
	}
	if o.ownedPath != "" {
		req.Path = events.Clip(o.ownedPath, events.MaxUsedPathLen)
	} else {
		req.Path = own.copy(path)
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
	rh.SetCanonical(keyKeyID, bytesView(kh.ID[0])) // the values are copied
	rh.SetCanonical(keyKeyOwner, bytesView(kh.Owner[0]))
	rh.SetCanonical(keyKeyEnvironment, bytesView(kh.Environment[0]))
	if len(h.meta) > 0 {
		for i, v := range res.Entry.MetaValues(h.meta) {
			rh.SetCanonical(h.metaBytes[i], bytesView(headerValue(v)))
		}
	}
	ctx.SetStatusCode(http.StatusOK)
}

// Header names in the canonical form fasthttp stores them in (a Server
// normalizes names unless DisableHeaderNamesNormalizing, which keyledger
// never sets), for PeekCanonical: Peek would copy and normalize the name
// on every call, a fifth of this handler's time (and SetCanonical: Set).
var (
	keyAuthorization      = []byte("Authorization")
	keyRequiredPermission = []byte("X-Required-Permission")
	keyKeyCost            = []byte("X-Key-Cost")
	keyKeyID              = []byte("X-Key-Id")
	keyKeyOwner           = []byte("X-Key-Owner")
	keyKeyEnvironment     = []byte("X-Key-Environment")
)

// ownStrings copies byte slices into strings sharing one buffer, sized in
// advance so that the copies cost one allocation. (Were it to grow, the
// strings made before would stay valid in the old array.)
type ownStrings struct{ buf []byte }

func (o *ownStrings) copy(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	i := len(o.buf)
	o.buf = append(o.buf, b...)
	return unsafe.String(&o.buf[i], len(b))
}

// ip is the recorded address of o: its canonical text.
func (o *ownStrings) ip(f fastOrigin) string {
	if !f.ip.IsValid() {
		return f.ipText
	}
	i := len(o.buf)
	o.buf = f.ip.AppendTo(o.buf)
	return unsafe.String(&o.buf[i], len(o.buf)-i)
}

// unsafeString views b as a string without copying. Only for values that
// do not outlive the handler.
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// clip cuts b to at most n bytes (see events.Clip), so that a huge header
// is not copied whole only to be cut when it is published.
func clip(b []byte, n int) []byte {
	if len(b) > n {
		return bytesView(events.Clip(unsafeString(b), n))
	}
	return b
}

// method returns the method as a string without allocating for the
// standard ones (ok); any other is to be copied.
func method(b []byte) (string, bool) {
	switch string(b) {
	case http.MethodGet:
		return http.MethodGet, true
	case http.MethodPost:
		return http.MethodPost, true
	case http.MethodPut:
		return http.MethodPut, true
	case http.MethodPatch:
		return http.MethodPatch, true
	case http.MethodDelete:
		return http.MethodDelete, true
	case http.MethodHead:
		return http.MethodHead, true
	case http.MethodOptions:
		return http.MethodOptions, true
	}
	return "", false
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
