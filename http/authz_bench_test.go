package http_test

import (
	"net"
	"testing"

	khttp "github.com/keyledger/keyledger/http"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/verifier"
	"github.com/keyledger/keyledger/verifier/verifiertest"
	"github.com/valyala/fasthttp"
)

// BenchmarkAuthzFastHTTP is the fasthttp forward-auth endpoint alone (no
// server, no connection), on the requests it sees most: nginx
// auth_request from a trusted peer, the same headers from a peer that is
// not trusted, and a client path whose query carries a key. The
// verification itself is BenchmarkVerify's; what is measured on top is
// reading the headers and copying what the KeyUsed event keeps.
func BenchmarkAuthzFastHTTP(b *testing.B) {
	f := verifiertest.New(b)
	live, _ := f.MustCreate(b, keyledger.EnvLive, []string{"workflows:read"}, nil)
	h := khttp.NewVerifierHandler(verifier.New(f.P.Table(), verifier.Config{
		Environment: keyledger.EnvLive, Node: "n1", Usage: discardRecorder{}}))
	for _, bc := range []struct {
		name string
		peer net.IP
		uri  string
	}{
		{"nginx from a trusted peer", net.IPv4(127, 0, 0, 1), "/api/workflows/42"},
		{"nginx headers from an untrusted peer", net.IPv4(198, 51, 100, 7), "/api/workflows/42"},
		{"key in the forwarded query", net.IPv4(127, 0, 0, 1), "/api/workflows/42?api_key=" + live},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var req fasthttp.Request
			req.Header.SetMethod("GET")
			req.SetRequestURI("/v1/authz")
			req.Header.Set("Authorization", "Bearer "+live)
			req.Header.Set("X-Required-Permission", "workflows:read")
			req.Header.Set("X-Original-Uri", bc.uri)
			req.Header.Set("X-Original-Method", "GET")
			req.Header.Set("X-Forwarded-For", "203.0.113.7")
			req.Header.Set("X-Real-Ip", "203.0.113.7")
			req.Header.Set("User-Agent", "sdk/1.0")
			var ctx fasthttp.RequestCtx
			ctx.Init(&req, &net.TCPAddr{IP: bc.peer, Port: 40000}, nil)
			b.ReportAllocs()
			for b.Loop() {
				ctx.Response.Reset()
				h.AuthzFastHTTP(&ctx)
				if ctx.Response.StatusCode() != 200 {
					b.Fatalf("status %d", ctx.Response.StatusCode())
				}
			}
		})
	}
}
