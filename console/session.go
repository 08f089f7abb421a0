package console

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/verifier"
)

// Cookie names. The session cookie is HttpOnly, SameSite=Strict, Secure
// over TLS, scoped to the console's path; the sign-in cookie carries the
// sign-in form's CSRF token (double submit), for the one form posted
// before there is a session.
const (
	SessionCookie = "keyledger_session"
	SigninCookie  = "keyledger_signin"
)

// BootstrapActor is the actor of events caused in a session signed in
// with the admin token (as with the API).
const BootstrapActor = "admin-token"

// Session is one signed-in browser.
type Session struct {
	// Actor names who signed in: BootstrapActor or the admin key's id.
	Actor string
	// KeyID is the admin key signed in with ("" for the token): checked
	// again on every request.
	KeyID string
	// Scope is the owner an owner-scoped admin key is limited to.
	Scope string
	// CSRF is the token every state-changing form carries.
	CSRF string

	created, seen time.Time
	// flash is a message for the next page (after a redirect).
	flash string
	// forms are the one-time nonces of forms that issue a secret (create,
	// roll), mapped to the key they made once used: a resubmitted form
	// (reload, back) must not issue a second key.
	forms map[string]string
	sum   [32]byte
}

type sessions struct {
	now       func() time.Time
	rand      io.Reader
	idle, max time.Duration

	mu sync.Mutex
	m  map[[32]byte]*Session
}

func newSessions(now func() time.Time, rand io.Reader, idle, max time.Duration) *sessions {
	return &sessions{now: now, rand: rand, idle: idle, max: max, m: map[[32]byte]*Session{}}
}

// token returns 32 random bytes, URL-safe base64.
func token(r io.Reader) string {
	var b [32]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		panic("console: no randomness: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// create starts a session and returns it with its cookie value. Only the
// value's SHA-256 is kept: a dump of the node's memory holds no usable
// cookie.
func (s *sessions) create(actor, keyID, scope string) (*Session, string) {
	value := token(s.rand)
	now := s.now()
	ses := &Session{Actor: actor, KeyID: keyID, Scope: scope, CSRF: token(s.rand), created: now, seen: now,
		forms: map[string]string{}, sum: sha256.Sum256([]byte(value))}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= MaxSessions {
		// Expired sessions are otherwise dropped when next presented.
		for k, o := range s.m {
			if s.expired(o, now) {
				delete(s.m, k)
			}
		}
	}
	if len(s.m) >= MaxSessions {
		var oldest *Session
		for _, o := range s.m {
			if oldest == nil || o.seen.Before(oldest.seen) {
				oldest = o
			}
		}
		delete(s.m, oldest.sum)
	}
	s.m[ses.sum] = ses
	return ses, value
}

func (s *sessions) expired(ses *Session, now time.Time) bool {
	return now.Sub(ses.seen) >= s.idle || now.Sub(ses.created) >= s.max
}

// get returns the request's live session, if any, and marks it used.
func (s *sessions) get(r *http.Request) (*Session, bool) {
	ck, err := r.Cookie(SessionCookie)
	if err != nil || ck.Value == "" {
		return nil, false
	}
	sum := sha256.Sum256([]byte(ck.Value))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ses, ok := s.m[sum]
	if !ok {
		return nil, false
	}
	if s.expired(ses, now) {
		delete(s.m, sum)
		return nil, false
	}
	ses.seen = now
	return ses, true
}

func (s *sessions) end(ses *Session) {
	s.mu.Lock()
	delete(s.m, ses.sum)
	s.mu.Unlock()
}

// takeFlash returns and clears the session's flash message.
func (s *sessions) takeFlash(ses *Session) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := ses.flash
	ses.flash = ""
	return f
}

func (s *sessions) setFlash(ses *Session, msg string) {
	s.mu.Lock()
	ses.flash = msg
	s.mu.Unlock()
}

// newForm returns a one-time nonce for a form that issues a secret.
func (s *sessions) newForm(ses *Session) string {
	n := token(s.rand)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(ses.forms) >= 256 {
		clear(ses.forms) // a session opening hundreds of forms loses only their resubmission guard
	}
	ses.forms[n] = ""
	return n
}

// useForm consumes nonce: ok when it was issued and unused. A used one
// returns the key it made (prev) so the page can point at it.
func (s *sessions) useForm(ses *Session, nonce string) (prev string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, known := ses.forms[nonce]
	if !known || v != "" {
		return v, false
	}
	ses.forms[nonce] = "-"
	return "", true
}

// formFailed makes nonce usable again: the form's write failed, so the
// user may correct it and send it once more.
func (s *sessions) formFailed(ses *Session, nonce string) {
	s.mu.Lock()
	if ses.forms[nonce] == "-" {
		ses.forms[nonce] = ""
	}
	s.mu.Unlock()
}

func (s *sessions) formMade(ses *Session, nonce, keyID string) {
	s.mu.Lock()
	ses.forms[nonce] = keyID
	s.mu.Unlock()
}

type sessionKey struct{}

func sessionOf(r *http.Request) *Session {
	s, _ := r.Context().Value(sessionKey{}).(*Session)
	return s
}

// write is the admin.Write of a console action.
func (c *Console) write(r *http.Request) admin.Write {
	s := sessionOf(r)
	return admin.Write{Actor: s.Actor, ActorIP: c.cfg.ClientIP(r), Scope: s.Scope, Wait: admin.WaitAll}
}

// authorize returns the request's session if it may still act: signed in,
// not expired, and, for an admin key, that key still active and admin on a
// node whose table is fresh. A key revoked, disabled or expired ends its
// sessions on their next request, on every node.
func (c *Console) authorize(r *http.Request) (*Session, error) {
	ses, ok := c.sessions.get(r)
	if !ok {
		return nil, keyledger.ErrUnauthorized
	}
	if ses.KeyID != "" {
		if c.cfg.Verifier != nil {
			if err := c.cfg.Verifier.ReadyError(); err != nil {
				return nil, err
			}
		}
		scope, ok := c.cfg.Admin.AdminKey(ses.KeyID, c.cfg.ClientIP(r))
		if !ok || scope != ses.Scope {
			c.sessions.end(ses)
			return nil, keyledger.ErrUnauthorized
		}
	}
	return ses, nil
}

// page wraps a GET page: without a live session it redirects to sign-in.
func (c *Console) page(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ses, err := c.authorize(r)
		if err != nil {
			if keyledger.ErrorCode(err) == keyledger.Unauthorized {
				c.clearSession(w, r)
				http.Redirect(w, r, Prefix+"signin", http.StatusSeeOther)
				return
			}
			c.fail(w, r, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, ses)))
	})
}

// action wraps a state-changing POST: it needs a live session, a form
// carrying the session's CSRF token and, when the browser says where the
// request comes from, this origin. Refusals change nothing.
func (c *Console) action(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ses, err := c.authorize(r)
		if err != nil {
			if keyledger.ErrorCode(err) == keyledger.Unauthorized {
				c.clearSession(w, r)
				c.plainError(w, r, http.StatusUnauthorized, "You are not signed in, or your session ended. Sign in again; nothing was changed.")
				return
			}
			c.fail(w, r, err)
			return
		}
		if !c.sameOrigin(r) {
			c.plainError(w, r, http.StatusForbidden, "This form came from another site; nothing was changed.")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			c.plainError(w, r, http.StatusBadRequest, "The form could not be read; nothing was changed.")
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(ses.CSRF)) != 1 {
			c.plainError(w, r, http.StatusForbidden, "This form has expired or did not come from this console (CSRF check); nothing was changed. Reload the page and try again.")
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, ses)))
	})
}

// sameOrigin reports whether the request's Origin (or, without one, its
// Referer) is this host, when the browser sent either. SameSite=Strict
// already keeps the cookie off cross-site posts; this is the second lock.
func (c *Console) sameOrigin(r *http.Request) bool {
	from := r.Header.Get("Origin")
	if from == "" {
		from = r.Header.Get("Referer")
	}
	if from == "" {
		return true
	}
	if from == "null" {
		return false
	}
	u, err := url.Parse(from)
	return err == nil && u.Host == r.Host
}

func secure(r *http.Request) bool {
	// A client that lies about X-Forwarded-Proto only makes its own cookie
	// stricter.
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func (c *Console) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: Prefix, MaxAge: maxAge,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode})
}

func (c *Console) clearSession(w http.ResponseWriter, r *http.Request) {
	if _, err := r.Cookie(SessionCookie); err == nil {
		c.setCookie(w, r, SessionCookie, "", -1)
	}
}

type signinView struct {
	CSRF    string
	Problem string
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := c.sessions.get(r); ok {
		http.Redirect(w, r, Prefix+"keys", http.StatusSeeOther)
		return
	}
	c.signinForm(w, r, http.StatusOK, "")
}

func (c *Console) signinForm(w http.ResponseWriter, r *http.Request, status int, problem string) {
	tok := token(c.cfg.Rand)
	c.setCookie(w, r, SigninCookie, tok, 600)
	c.render(w, r, status, "signin", view{Title: "Sign in", Data: signinView{CSRF: tok, Problem: problem}})
}

// signin exchanges the admin token or an admin key, posted in the form's
// body (never in a URL), for a session. Every failure reads the same.
func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil {
		c.signinForm(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	ck, err := r.Cookie(SigninCookie)
	if err != nil || !c.sameOrigin(r) || subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostForm.Get("csrf"))) != 1 || ck.Value == "" {
		c.signinForm(w, r, http.StatusForbidden, "The sign-in form expired or came from another site. Try again.")
		return
	}
	cred := r.PostForm.Get("credential")
	actor, keyID, scope, err := c.check(r, cred)
	if err != nil {
		if keyledger.ErrorCode(err) == keyledger.Unavailable {
			c.fail(w, r, err)
			return
		}
		c.signinForm(w, r, http.StatusUnauthorized, "Invalid admin token or admin key.")
		return
	}
	// A fresh session id at every sign-in: no fixation.
	ses, value := c.sessions.create(actor, keyID, scope)
	_ = ses
	c.setCookie(w, r, SigninCookie, "", -1)
	c.setCookie(w, r, SessionCookie, value, int(c.cfg.MaxAge/time.Second))
	http.Redirect(w, r, Prefix+"keys", http.StatusSeeOther)
}

// check tells who cred is: the admin token (compared as SHA-256 sums in
// constant time) or a key holding the admin permission, verified like any
// key.
func (c *Console) check(r *http.Request, cred string) (actor, keyID, scope string, err error) {
	if cred == "" || len(cred) > 512 {
		return "", "", "", keyledger.ErrUnauthorized
	}
	sum := sha256.Sum256([]byte(cred))
	if len(c.cfg.TokenSum) == sha256.Size && subtle.ConstantTimeCompare(sum[:], c.cfg.TokenSum) == 1 {
		return BootstrapActor, "", "", nil
	}
	if c.cfg.Verifier == nil {
		return "", "", "", keyledger.ErrUnauthorized
	}
	res := c.cfg.Verifier.Verify(&verifier.Request{Key: cred, Permission: keyledger.PermissionAdmin, IP: c.cfg.ClientIP(r),
		UserAgent: r.Header.Get("User-Agent"), Method: r.Method, Path: r.URL.Path})
	switch {
	case res.Valid():
		return res.Entry.ID(), res.Entry.ID(), res.Entry.Scope(), nil
	case res.Outcome == keyledger.OutcomeUnavailable:
		return "", "", "", verifier.OutcomeError(res.Outcome, keyledger.PermissionAdmin, 0)
	}
	return "", "", "", keyledger.ErrUnauthorized
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request) {
	c.sessions.end(sessionOf(r))
	c.clearSession(w, r)
	http.Redirect(w, r, Prefix+"signin", http.StatusSeeOther)
}
