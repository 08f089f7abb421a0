package http

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// Server is a node's HTTP server. It is fasthttp: forward auth
// (/v1/authz) is most of a node's traffic, and with net/http its
// per-request cost was most of the node's CPU, so the verifier answers it
// natively; every other endpoint is the net/http router (NewRouter)
// through fasthttp's adaptor (a few microseconds more, on low-volume
// endpoints).
//
// A Server that stops serving for any reason but Close reports it on Done
// and Err: its owner treats that as fatal (a node whose HTTP is gone must
// exit so that a supervisor restarts it, never linger half alive).
type Server struct {
	fast *fasthttp.Server
	log  *slog.Logger
	ln   net.Listener

	done      chan struct{}
	closing   chan struct{}
	closeOnce sync.Once
	err       error // set before done is closed
}

// NewServer returns the HTTP server of a node serving what o names: all
// of it, or one listener's share (o.Endpoints).
func NewServer(o RouterOptions) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	var authz *VerifierHandler
	if o.Verifier != nil && o.Endpoints.verifier() {
		authz = NewVerifierHandlerTrusting(o.Verifier, o.TrustedProxies)
		authz.SetMetaHeaders(o.AuthzMetaHeaders)
	}
	s := newServer(authz, o.HTTPMetrics.Wrap(NewRouter(o)), o.Logger, o.Token)
	if o.MaxConns > 0 {
		s.fast.Concurrency = o.MaxConns
	}
	s.fast.MaxConnsPerIP = o.MaxConnsPerIP
	return s
}

// newServer answers forward auth with authz (nil: through rest too) and
// everything else with rest. secret (the admin token) is scrubbed from
// whatever the HTTP library logs.
func newServer(authz *VerifierHandler, rest http.Handler, log *slog.Logger, secret string) *Server {
	s := &Server{log: log, done: make(chan struct{}), closing: make(chan struct{})}
	adapted := fasthttpadaptor.NewFastHTTPHandler(ownRequest(rest))
	s.fast = &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			// fasthttp does not recover panics as net/http does: one
			// would end the process, and every node's verification with it.
			defer func() {
				if v := recover(); v != nil {
					log.Error("panic serving request", "method", string(ctx.Method()), "path", redactSecrets(string(ctx.Path())), "panic", v)
					FastHTTPInternalError(ctx)
				}
			}()
			if authz != nil && IsAuthzPath(ctx.Path()) {
				authz.AuthzFastHTTP(ctx)
				return
			}
			adapted(ctx)
		},
		ErrorHandler: FastHTTPError,
		// Gateways forward the client's headers to forward auth, cookies
		// included: allow 32 KiB of headers (net/http allows 1 MiB).
		ReadBufferSize: 32 << 10,
		// Admin bodies are bounded by the handlers (64 KiB); this only
		// stops a larger body from being read at all.
		MaxRequestBodySize: 1 << 20,
		// Slow clients cannot hold a connection reading forever.
		ReadTimeout:           30 * time.Second,
		IdleTimeout:           120 * time.Second,
		NoDefaultServerHeader: true,
		CloseOnShutdown:       true,
		// A request fasthttp cannot parse is logged with its raw bytes
		// otherwise: Authorization headers, keys and admin tokens among
		// them.
		SecureErrorLogMessage: true,
		Logger:                libraryLogger{log: log, secret: secret},
	}
	return s
}

// Open listens on addr (host:port; port 0 picks one) and serves in a
// goroutine of the Server's own until Close.
func (s *Server) Open(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot listen on "+addr)
	}
	s.ln = &retryListener{Listener: ln, log: s.log, closing: s.closing}
	go s.serve()
	return nil
}

func (s *Server) serve() {
	err := s.fast.Serve(s.ln)
	select {
	case <-s.closing:
		err = nil
	default:
		if err == nil {
			err = errors.New("the listener was closed")
		}
		err = fmt.Errorf("http server stopped serving: %w", err)
	}
	s.err = err
	close(s.done)
}

// Addr is where the server listens (after Open).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the server's base URL (after Open).
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// Done is closed when the server has stopped serving: after Close, or on
// its own, in which case Err says why.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err is why the server stopped serving other than by Close (nil while it
// serves and after Close).
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Close stops accepting connections and waits, within ctx, for requests
// in flight to finish.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() { close(s.closing) })
	if s.ln == nil {
		return nil
	}
	err := s.fast.ShutdownWithContext(ctx)
	// Serve may not have taken the listener yet when Close follows Open at
	// once; closing it ourselves makes sure Serve returns either way.
	s.ln.Close()
	select {
	case <-s.done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

// retryListener retries accept errors that pass: out of descriptors or
// buffers, or a connection aborted before it was accepted. fasthttp treats
// every error but a timeout as permanent and stops serving, so one burst of
// connections past `ulimit -n` would end a node's HTTP for good.
type retryListener struct {
	net.Listener
	log     *slog.Logger
	closing <-chan struct{}
}

func (l *retryListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err == nil || !temporaryAcceptError(err) {
			return c, err
		}
		if delay == 0 {
			delay = 5 * time.Millisecond
			l.log.Warn("accept failed; retrying with backoff", "err", err)
		} else {
			delay = min(2*delay, time.Second)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-l.closing:
			t.Stop()
			return nil, err
		}
	}
}

func temporaryAcceptError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ownRequest gives rest a request whose strings it owns. fasthttp's
// adaptor lends the net/http request strings that point into fasthttp's
// buffers, which the next request on the connection overwrites; handlers
// here keep some beyond their return (a verification's KeyUsed event is
// published later), so they are copied at this boundary.
func ownRequest(rest http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := *r
		o.Method, o.Proto, o.Host = strings.Clone(r.Method), strings.Clone(r.Proto), strings.Clone(r.Host)
		o.RemoteAddr, o.RequestURI = strings.Clone(r.RemoteAddr), strings.Clone(r.RequestURI)
		if r.URL != nil {
			u := *r.URL
			u.Scheme, u.Opaque, u.Host = strings.Clone(u.Scheme), strings.Clone(u.Opaque), strings.Clone(u.Host)
			u.Path, u.RawPath, u.RawQuery, u.Fragment = strings.Clone(u.Path), strings.Clone(u.RawPath), strings.Clone(u.RawQuery), strings.Clone(u.Fragment)
			u.User = nil
			o.URL = &u
		}
		o.Header = make(http.Header, len(r.Header))
		for k, vs := range r.Header {
			own := make([]string, len(vs))
			for i, v := range vs {
				own[i] = strings.Clone(v)
			}
			o.Header[strings.Clone(k)] = own
		}
		o.TransferEncoding = slices.Clone(r.TransferEncoding)
		o.Trailer = nil
		// The adaptor's request context is fasthttp's RequestCtx itself,
		// reused for the next request once this one returns: a context
		// derived from it (a timeout around a ledger write) has a
		// goroutine of the context package read it later, a data race
		// with that reuse. The handler gets a context of its own, ended
		// when it returns or the server shuts down.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if shutdown := r.Context().Done(); shutdown != nil {
			// Read now, while the RequestCtx is this request's.
			go func() {
				select {
				case <-shutdown:
					cancel()
				case <-ctx.Done():
				}
			}()
		}
		rest.ServeHTTP(w, o.WithContext(ctx))
	})
}
