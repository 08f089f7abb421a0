// Package console is keyledger's web console: the "Settings → API Keys"
// page and the activity dashboard of the product's documentation, served
// by admin nodes at /console/.
//
// It is server-rendered HTML (html/template) with charts drawn as SVG on
// the server, and one small script of its own for the copy button and the
// typed confirmations: every asset is embedded in the binary, nothing is
// fetched at run time, and a Go toolchain alone builds it. The console
// calls the same admin.Service and analytics.Analytics as the JSON API, so
// it can do nothing the API cannot, and every event it causes names the
// signed-in actor.
package console

import (
	"crypto/rand"
	"embed"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/verifier"
)

// Prefix is where the console is served.
const Prefix = "/console/"

// Defaults of Config.
const (
	DefaultIdleTimeout = 15 * time.Minute
	DefaultMaxAge      = 8 * time.Hour
	// MaxSessions bounds the sessions one node holds; past it the one idle
	// longest is ended to make room.
	MaxSessions = 10_000
)

//go:embed templates/*.html static/*
var assets embed.FS

// Config is what a Console needs.
type Config struct {
	// Admin issues, revokes and reads keys.
	Admin *admin.Service
	// Verifier checks admin keys at sign-in, and its readiness guards
	// every request of a session signed in with one: a node that cannot
	// trust its table cannot tell whether the key was revoked. nil: only
	// the admin token signs in.
	Verifier *verifier.Verifier
	// TokenSum is the SHA-256 of the admin token.
	TokenSum []byte
	// Audit is the node's provable audit (the activity page shows its
	// newest checkpoint, which operators can download); nil when off.
	Audit *audit.Auditor
	// Analytics is the node's analytics, nil (or returning nil) when off:
	// the panels that need it say so instead of failing.
	Analytics func() *analytics.Analytics
	// ClientIP is the address a request came from (trusted proxies
	// applied), for the events a console action causes.
	ClientIP func(*http.Request) string
	// Status maps an error to its HTTP status (the API's one table).
	Status func(error) int
	// Report logs an error the way the API does: faults and outages.
	Report func(*http.Request, error)
	// IdleTimeout ends a session unused for that long (default 15 min);
	// MaxAge ends any session that old (default 8 h).
	IdleTimeout time.Duration
	MaxAge      time.Duration
	Now         func() time.Time
	Rand        io.Reader
	Logger      *slog.Logger
}

// Console serves the console's pages under Prefix.
type Console struct {
	cfg      Config
	sessions *sessions
	pages    *pages
	mux      *http.ServeMux
	static   http.Handler
}

// New returns the console.
func New(cfg Config) *Console {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.ClientIP == nil {
		cfg.ClientIP = func(r *http.Request) string { return "" }
	}
	if cfg.Status == nil {
		cfg.Status = func(error) int { return http.StatusInternalServerError }
	}
	if cfg.Report == nil {
		cfg.Report = func(*http.Request, error) {}
	}
	if cfg.Analytics == nil {
		cfg.Analytics = func() *analytics.Analytics { return nil }
	}
	static, err := fs.Sub(assets, "static")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	c := &Console{
		cfg:      cfg,
		sessions: newSessions(cfg.Now, cfg.Rand, cfg.IdleTimeout, cfg.MaxAge),
		pages:    mustParsePages(),
		static:   http.StripPrefix(Prefix+"static/", http.FileServerFS(static)),
	}
	c.routes()
	return c
}

func (c *Console) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET "+Prefix+"{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix+"keys", http.StatusSeeOther)
	})
	m.HandleFunc("GET "+Prefix+"static/", c.serveStatic)
	m.HandleFunc("GET "+Prefix+"signin", c.signinPage)
	m.HandleFunc("POST "+Prefix+"signin", c.signin)
	m.Handle("POST "+Prefix+"signout", c.action(c.signout))
	m.Handle("GET "+Prefix+"keys", c.page(c.keys))
	m.Handle("GET "+Prefix+"keys/new", c.page(c.newKey))
	m.Handle("POST "+Prefix+"keys", c.action(c.create))
	m.Handle("GET "+Prefix+"keys/{id}", c.page(c.key))
	m.Handle("POST "+Prefix+"keys/{id}/revoke", c.action(c.revoke))
	m.Handle("POST "+Prefix+"keys/{id}/roll", c.action(c.roll))
	m.Handle("POST "+Prefix+"keys/{id}/disable", c.action(c.setDisabled(true)))
	m.Handle("POST "+Prefix+"keys/{id}/enable", c.action(c.setDisabled(false)))
	m.Handle("GET "+Prefix+"activity", c.page(c.activity))
	m.Handle("GET "+Prefix+"checkpoint", c.page(c.checkpoint))
	m.HandleFunc(Prefix, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			c.plainError(w, r, http.StatusMethodNotAllowed, "This page does not take "+r.Method+" requests.")
			return
		}
		c.plainError(w, r, http.StatusNotFound, "There is no such page.")
	})
	c.mux = m
}

// ServeHTTP serves the console with its security headers on every
// answer.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// No inline script or style anywhere: the one script and the one
	// stylesheet are files of the console's own. SVG charts are markup,
	// styled by classes.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: under no-referrer a browser sends
	// "Origin: null" with every form post, and the origin check needs it.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
	if !strings.HasPrefix(r.URL.Path, Prefix+"static/") {
		// Pages carry key records and, once, a secret: never cached.
		h.Set("Cache-Control", "no-store")
	}
	c.mux.ServeHTTP(w, r)
}

func (c *Console) serveStatic(w http.ResponseWriter, r *http.Request) {
	// The assets change only with the binary.
	w.Header().Set("Cache-Control", "private, max-age=3600")
	c.static.ServeHTTP(w, r)
}

// fail renders err as an error page with the API's status for it.
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	c.cfg.Report(r, err)
	status := c.cfg.Status(err)
	msg := keyledger.ErrorMessage(err)
	var e *keyledger.Error
	if !errors.As(err, &e) {
		msg = "internal error"
	}
	c.plainError(w, r, status, msg)
}

// plainError renders an error page.
func (c *Console) plainError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	s, _ := c.sessions.get(r)
	c.render(w, r, status, "error", view{Session: s, Title: http.StatusText(status), Data: errorView{Status: status, Message: msg}})
}

type errorView struct {
	Status  int
	Message string
}
