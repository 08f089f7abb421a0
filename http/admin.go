package http

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
)

// MaxBody bounds admin request bodies.
const MaxBody = 64 << 10

// BootstrapActor is the actor of events caused with the admin token.
const BootstrapActor = "admin-token"

type api struct {
	svc      *admin.Service
	log      *slog.Logger
	tokenSum []byte
	verifier *verifier.Verifier
	audit    *audit.Auditor
	// proxies are the peers whose X-Forwarded-For / X-Real-IP name the
	// actor_ip of the events a request causes.
	proxies *proxySet
	outages outageLog
	// quotas is the fleet's quota enforcement (nil: none on this node).
	quotas QuotaSource
	// analytics is the analytics serving now (nil: off or not up yet).
	analytics func() *analytics.Analytics
}

// throttle lets a repeated log line through at most once a second, and
// says how many it stands for: a flood of the same event (an outage,
// forged requests) is in the log without a line per request.
type throttle struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether a line may be written now, and how many were
// held back since the last one.
func (t *throttle) allow() (suppressed int, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if now.Sub(t.last) < time.Second {
		t.suppressed++
		return 0, false
	}
	n := t.suppressed
	t.last, t.suppressed = now, 0
	return n, true
}

// outageLog logs unavailable (503) answers with their cause: the first
// at once, then at most one line a second.
type outageLog struct{ throttle }

func (o *outageLog) log(log *slog.Logger, r *http.Request, err error) {
	if n, ok := o.allow(); ok {
		log.Warn("admin request answered 503", "method", r.Method, "path", redactSecrets(r.URL.Path), "err", err,
			"similar_since_last_line", n)
	}
}

type actorKey struct{}

// caller is who made an admin request.
type caller struct {
	actor, ip string
	// scope is the owner an owner-scoped admin key is limited to.
	scope string
}

// write is what a read needs to know of its caller: its scope.
func (c caller) write() admin.Write {
	return admin.Write{Actor: c.actor, ActorIP: c.ip, Scope: c.scope}
}

func callerOf(r *http.Request) caller {
	c, _ := r.Context().Value(actorKey{}).(caller)
	return c
}

// fail writes err; internal errors, and only those, are logged as faults.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	a.report(r, err)
	WriteError(w, err)
}

// report logs err if it is a fault (internal) or an outage (unavailable,
// at most a line a second); every other error is the caller's and is
// only answered.
func (a *api) report(r *http.Request, err error) {
	switch keyledger.ErrorCode(err) {
	case keyledger.Internal:
		a.log.Error("internal error", "method", r.Method, "path", redactSecrets(r.URL.Path), "err", err)
	case keyledger.Unavailable:
		a.outages.log(a.log, r, err)
	}
}

// recover turns a panic into a 500 envelope: the client never sees a stack
// trace, the log gets the fault.
func (a *api) recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				a.log.Error("panic serving request", "method", r.Method, "path", redactSecrets(r.URL.Path), "panic", v)
				WriteError(w, keyledger.Errorf(keyledger.Internal, "internal error"))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// auth requires "Authorization: Bearer <admin token>" or a ledger key
// holding the reserved "admin" permission. The bootstrap token is compared
// as a SHA-256 sum in constant time, which leaks neither content nor
// length; an admin key is verified like any key, so revoking it locks it
// out at once. The caller (actor and IP) goes into the request's context
// for the events it causes.
func (a *api) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := bearer(header(r, "Authorization"))
		if tok == "" {
			WriteError(w, keyledger.ErrUnauthorized)
			return
		}
		ip := a.proxies.clientIP(r)
		c := caller{actor: BootstrapActor, ip: ip}
		if !a.isToken(tok) {
			if a.verifier == nil {
				WriteError(w, keyledger.ErrUnauthorized)
				return
			}
			res := a.verifier.Verify(&verifier.Request{Key: tok, Permission: keyledger.PermissionAdmin, IP: ip,
				UserAgent: r.Header.Get("User-Agent"), Method: r.Method, Path: redactSecrets(r.URL.Path)})
			if !res.Valid() {
				switch res.Outcome {
				case keyledger.OutcomeForbidden, keyledger.OutcomeIPNotAllowed:
					// A valid key that may not administer gets the
					// same answer as an invalid one: a 403 would tell
					// whoever holds it that it works elsewhere.
					WriteError(w, keyledger.ErrUnauthorized)
				default:
					// The verifier's refusal, Retry-After included.
					writeRefusal(w, &verifier.Request{Permission: keyledger.PermissionAdmin}, res)
				}
				return
			}
			c.actor, c.scope = res.Entry.ID(), res.Entry.Scope()
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), actorKey{}, c)))
	})
}

// isToken reports whether tok is the admin token, compared as SHA-256
// sums in constant time (which leaks neither content nor length).
func (a *api) isToken(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], a.tokenSum) == 1
}

func (a *api) methods(m map[string]http.HandlerFunc) http.Handler {
	var allow []string
	for k := range m {
		allow = append(allow, k)
	}
	allowed := strings.Join(allow, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, ok := m[r.Method]
		if !ok {
			w.Header().Set("Allow", allowed)
			a.fail(w, r, &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonMethodNotAllowed,
				Message: "method " + keyledger.Quote(r.Method) + " is not allowed here; use " + allowed})
			return
		}
		h(w, r)
	})
}

// handleWrite is the shape of every write endpoint: decode the JSON body
// into a Req (an empty body is allowed when optional), read ?wait= and
// ?timeout=, call do, and answer status with its result. A write that
// created a record returns its path: the answer is then 201 with it as
// Location, whatever status says (a PUT creates or replaces).
func handleWrite[Req, Res any](a *api, w http.ResponseWriter, r *http.Request, def admin.Wait, optional bool, status int,
	do func(ctx context.Context, req Req, w8 admin.Write) (Res, string, error)) {
	var req Req
	if !optional || r.ContentLength != 0 {
		if err := DecodeJSON(w, r, MaxBody, &req); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	w8, err := writeOptions(r, def)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	res, location, err := do(r.Context(), req, w8)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if location != "" {
		w.Header().Set("Location", location)
		status = http.StatusCreated
	}
	WriteJSON(w, status, res)
}

func (a *api) create(w http.ResponseWriter, r *http.Request) {
	handleWrite(a, w, r, admin.WaitAll, false, http.StatusCreated, func(ctx context.Context, req admin.CreateRequest, w8 admin.Write) (*admin.Created, string, error) {
		res, err := a.svc.Create(ctx, req, w8)
		if err != nil {
			return nil, "", err
		}
		return res, keyPath(res.ID), nil
	})
}

// keyPath is a key's URL, the Location of a write that created it.
func keyPath(id string) string { return "/v1/keys/" + id }

// writeOptions reads ?wait=all|none and ?timeout=DURATION.
func writeOptions(r *http.Request, def admin.Wait) (admin.Write, error) {
	w := callerOf(r).write()
	w.Wait = def
	q := r.URL.Query()
	switch v := q.Get("wait"); v {
	case "":
	case string(admin.WaitAll), string(admin.WaitNone):
		w.Wait = admin.Wait(v)
	default:
		return w, keyledger.Errorf(keyledger.Invalid, "wait must be all or none, not %s", keyledger.Quote(v))
	}
	if v := q.Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > time.Minute {
			return w, keyledger.Errorf(keyledger.Invalid, "timeout must be a duration between 1ms and 1m, e.g. 500ms")
		}
		w.Timeout = d
	}
	return w, nil
}

type rollRequest struct {
	ExpireOldIn string `json:"expire_old_in"`
}

func (a *api) roll(w http.ResponseWriter, r *http.Request) {
	handleWrite(a, w, r, admin.WaitAll, true, http.StatusCreated, func(ctx context.Context, req rollRequest, w8 admin.Write) (*admin.Rolled, string, error) {
		grace := 24 * time.Hour
		if req.ExpireOldIn != "" {
			d, err := time.ParseDuration(req.ExpireOldIn)
			if err != nil {
				return nil, "", keyledger.Errorf(keyledger.Invalid, "expire_old_in must be a duration such as 1h, 30m or 0s")
			}
			grace = d
		}
		res, err := a.svc.Roll(ctx, r.PathValue("id"), grace, w8)
		if err != nil {
			return nil, "", err
		}
		return res, keyPath(res.ID), nil
	})
}

func (a *api) importKey(w http.ResponseWriter, r *http.Request) {
	handleWrite(a, w, r, admin.WaitAll, false, http.StatusCreated, func(ctx context.Context, req admin.ImportRequest, w8 admin.Write) (*admin.KeyView, string, error) {
		k, err := a.svc.Import(ctx, req, w8)
		if err != nil {
			return nil, "", err
		}
		return k, keyPath(k.ID), nil
	})
}

type revokeRequest struct {
	Reason string `json:"reason"`
}

func (a *api) revoke(w http.ResponseWriter, r *http.Request) {
	// An empty body is a revoke without a reason.
	handleWrite(a, w, r, admin.WaitAll, true, http.StatusOK, func(ctx context.Context, req revokeRequest, w8 admin.Write) (*admin.Revoked, string, error) {
		k, err := a.svc.Revoke(ctx, r.PathValue("id"), req.Reason, w8)
		return k, "", err
	})
}

// etag is a record's revision (a key's, a plan's, an owner's) as an
// entity tag, for If-Match.
func etag(rev uint64) string { return `"` + strconv.FormatUint(rev, 10) + `"` }

// ifMatch reads If-Match: a revision, bare or quoted ("17", 17); 0 when
// absent. "*" matches any revision.
func ifMatch(r *http.Request) (uint64, error) {
	v := strings.TrimSpace(header(r, "If-Match"))
	if v == "" || v == "*" {
		return 0, nil
	}
	n, err := strconv.ParseUint(strings.Trim(strings.TrimPrefix(v, "W/"), `"`), 10, 64)
	if err != nil || n == 0 {
		return 0, keyledger.Errorf(keyledger.Invalid, "If-Match must be a record's revision, e.g. \"17\" (the ETag of its GET, such as GET /v1/keys/{id})")
	}
	return n, nil
}

func (a *api) update(w http.ResponseWriter, r *http.Request) {
	match, err := ifMatch(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	handleWrite(a, w, r, admin.WaitAll, false, http.StatusOK, func(ctx context.Context, patch admin.Patch, w8 admin.Write) (*admin.Updated, string, error) {
		res, err := a.svc.Update(ctx, r.PathValue("id"), patch, match, w8)
		if err == nil {
			w.Header().Set("ETag", etag(res.Revision))
		}
		return res, "", err
	})
}

func (a *api) setDisabled(off bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		handleWrite(a, w, r, admin.WaitAll, true, http.StatusOK, func(ctx context.Context, req revokeRequest, w8 admin.Write) (*admin.Updated, string, error) {
			res, err := a.svc.SetDisabled(ctx, r.PathValue("id"), off, req.Reason, w8)
			if err == nil {
				w.Header().Set("ETag", etag(res.Revision))
			}
			return res, "", err
		})
	}
}

// scopedOut refuses endpoints that span owners to owner-scoped admin keys.
func (a *api) scopedOut(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c := callerOf(r); c.scope != "" {
			a.fail(w, r, keyledger.Errorf(keyledger.Forbidden, "this admin key is limited to owner %s; this endpoint spans owners", keyledger.Quote(c.scope)))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	k, err := a.svc.Get(r.Context(), r.PathValue("id"), callerOf(r).write())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set("ETag", etag(k.Revision))
	views := []admin.KeyView{*k}
	a.svc.WithUsage(r.Context(), views)
	WriteJSON(w, http.StatusOK, views[0])
}

// listParams are the query parameters of GET /v1/keys.
var listParams = []string{"owner", "environment", "status", "name_prefix", "hint", "limit", "cursor"}

func (a *api) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var pq projector.PageQuery
	for name, vals := range q {
		if !slices.Contains(listParams, name) {
			a.fail(w, r, keyledger.Errorf(keyledger.Invalid, "unknown query parameter %s (filters: %s)", keyledger.Quote(name), strings.Join(listParams, ", ")))
			return
		}
		if len(vals) > 1 {
			a.fail(w, r, keyledger.Errorf(keyledger.Invalid, "query parameter %s given %d times", name, len(vals)))
			return
		}
	}
	pq.Owner, pq.NamePrefix, pq.Hint, pq.Cursor = q.Get("owner"), q.Get("name_prefix"), q.Get("hint"), q.Get("cursor")
	if s := q.Get("environment"); s != "" {
		env, err := keyledger.ParseEnvironment(s)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		pq.Environment = env
	}
	if s := q.Get("status"); s != "" {
		st, err := keyledger.ParseStatus(s)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		pq.Status = st
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > projector.MaxPageLimit {
			a.fail(w, r, keyledger.Errorf(keyledger.Invalid, "limit must be an integer from 1 to %d", projector.MaxPageLimit))
			return
		}
		pq.Limit = n
	}
	page, err := a.svc.Page(r.Context(), pq, callerOf(r).write())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.svc.WithUsage(r.Context(), page.Keys)
	WriteJSON(w, http.StatusOK, page)
}

func (a *api) nodes(w http.ResponseWriter, r *http.Request) {
	nodes := a.svc.Nodes()
	if nodes == nil {
		nodes = []admin.NodeView{}
	}
	WriteJSON(w, http.StatusOK, map[string]any{"nodes": nodes})
}

// HistoryEntry is one event of a key's audit trail with its ledger position.
type HistoryEntry struct {
	Seq   uint64          `json:"seq"`
	Event json.RawMessage `json:"event"`
	// SignedBy names the admin signing key that signed the event.
	SignedBy string `json:"signed_by,omitempty"`
	// Rejected says why no node applied the event (a forgery, or an
	// unsigned event): it is in the stream, not in the ledger.
	Rejected string `json:"rejected,omitempty"`
	// Proof (with ?proof=true) proves the event is in the latest
	// checkpoint; absent for events after it.
	Proof *EventProof `json:"proof,omitempty"`
}

func (a *api) events(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	recs, err := a.svc.History(r.Context(), id, callerOf(r).write())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]HistoryEntry, 0, len(recs))
	stored := make([][]byte, 0, len(recs))
	for _, rec := range recs {
		b, err := json.Marshal(rec.Event)
		if err != nil {
			a.fail(w, r, keyledger.Wrap(keyledger.Internal, err, "cannot encode event"))
			return
		}
		out = append(out, HistoryEntry{Seq: rec.Seq, Event: b, SignedBy: rec.Signer, Rejected: rec.Rejected})
		stored = append(stored, rec.Data)
	}
	switch r.URL.Query().Get("proof") {
	case "", "false":
	case "true":
		cp, err := a.proofs(out, stored)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		WriteJSON(w, http.StatusOK, map[string]any{"key_id": id, "events": out, "checkpoint": cp})
		return
	default:
		a.fail(w, r, keyledger.Errorf(keyledger.Invalid, "proof must be true or false"))
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"key_id": id, "events": out})
}
