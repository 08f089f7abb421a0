package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/projector"
)

// ExpiringSoon is how close to its expiry an active key is badged
// "expiring soon".
const ExpiringSoon = 7 * 24 * time.Hour

// KeysPageSize is how many keys one page of the list shows.
const KeysPageSize = 50

// view is what every page template gets.
type view struct {
	Session *Session
	Title   string
	Nav     string
	Flash   string
	Data    any
}

type pages struct {
	t map[string]*template.Template
}

var funcs = template.FuncMap{
	"utc":    func(t time.Time) string { return fmtTime(&t, timeLayout) },
	"utcp":   func(t *time.Time) string { return fmtTime(t, timeLayout) },
	"short":  func(t time.Time) string { return fmtTime(&t, shortLayout) },
	"shortp": func(t *time.Time) string { return fmtTime(t, shortLayout) },
	"join":   strings.Join,
	"badge":  badgeClass,
	"list":   func(s ...string) []string { return s },
}

func mustParsePages() *pages {
	base := template.Must(template.New("layout.html").Funcs(funcs).ParseFS(assets, "templates/layout.html"))
	p := &pages{t: map[string]*template.Template{}}
	names, err := fs.Glob(assets, "templates/*.html")
	if err != nil {
		panic(err)
	}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		p.t[name] = template.Must(template.Must(base.Clone()).ParseFS(assets, n))
	}
	return p
}

// render writes page name with v, or a plain 500 if the template fails
// (a fault, logged): never half a page.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, v view) {
	if v.Session != nil && v.Flash == "" {
		v.Flash = c.sessions.takeFlash(v.Session)
	}
	var buf bytes.Buffer
	t := c.pages.t[name]
	if err := t.ExecuteTemplate(&buf, "layout.html", v); err != nil {
		c.cfg.Report(r, keyledger.Wrap(keyledger.Internal, err, "cannot render console page "+name))
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// The console's times, always UTC: in full on a key's page, to the minute
// in the list.
const (
	timeLayout  = "2006-01-02 15:04:05Z"
	shortLayout = "2006-01-02 15:04"
)

// fmtTime formats t (nil or zero: a dash).
func fmtTime(t *time.Time, layout string) string {
	if t == nil || t.IsZero() {
		return "—"
	}
	return t.UTC().Format(layout)
}

// badge is a key's status as the list shows it: the ledger's status, with
// "expiring soon" for an active key within ExpiringSoon of its expiry.
func badge(k admin.KeyView, now time.Time) string {
	if k.Status == keyledger.StatusActive && k.ExpiresAt != nil && k.ExpiresAt.Sub(now) < ExpiringSoon {
		return "expiring soon"
	}
	return string(k.Status)
}

func badgeClass(b string) string { return "badge-" + strings.ReplaceAll(b, " ", "-") }

// outcomeClass is the CSS class of an outcome's colour; outcomes this
// build does not know share one.
func outcomeClass(o string) string {
	if _, ok := keyledger.ParseOutcome(o); ok {
		return "o-" + o
	}
	return "o-other"
}

// keyRow is one row of the keys list.
type keyRow struct {
	admin.KeyView
	Badge     string
	Sparkline template.HTML
	Uses24h   uint64
}

type keysView struct {
	Rows       []keyRow
	In, Q      string
	Env        string
	Status     string
	NextCursor string
	Filtered   bool
	Analytics  bool
}

var searchFields = map[string]bool{"name": true, "owner": true, "id": true, "hint": true}

func (c *Console) keys(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	kv := keysView{In: q.Get("in"), Q: strings.TrimSpace(q.Get("q")), Env: q.Get("environment"), Status: q.Get("status")}
	if kv.In == "" {
		kv.In = "name"
	}
	if !searchFields[kv.In] {
		c.plainError(w, r, http.StatusBadRequest, "Search in name, owner, id or hint.")
		return
	}
	pq := projector.PageQuery{Limit: KeysPageSize, Cursor: q.Get("cursor")}
	if kv.Env != "" {
		env, err := keyledger.ParseEnvironment(kv.Env)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		pq.Environment = env
	}
	if kv.Status != "" {
		st, err := keyledger.ParseStatus(kv.Status)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		pq.Status = st
	}
	kv.Filtered = kv.Q != "" || kv.Env != "" || kv.Status != ""
	var list []admin.KeyView
	switch {
	case kv.Q != "" && kv.In == "id":
		k, err := c.cfg.Admin.Get(r.Context(), kv.Q, c.write(r))
		switch {
		case err == nil:
			if (pq.Environment == keyledger.EnvUnknown || k.Environment == pq.Environment) && (pq.Status == "" || k.Status == pq.Status) {
				list = []admin.KeyView{*k}
			}
		case keyledger.ErrorCode(err) == keyledger.NotFound || keyledger.ErrorCode(err) == keyledger.Invalid:
		default:
			c.fail(w, r, err)
			return
		}
	default:
		switch kv.In {
		case "name":
			pq.NamePrefix = kv.Q
		case "owner":
			pq.Owner = kv.Q
		case "hint":
			pq.Hint = kv.Q
		}
		page, err := c.cfg.Admin.Page(r.Context(), pq, c.write(r))
		if err != nil {
			c.fail(w, r, err)
			return
		}
		list, kv.NextCursor = page.Keys, page.NextCursor
	}
	c.cfg.Admin.WithUsage(r.Context(), list)
	now := c.cfg.Now()
	var hourly map[string][]uint64
	if a := c.cfg.Analytics(); a != nil && len(list) > 0 {
		kv.Analytics = true
		ids := make([]string, len(list))
		for i := range list {
			ids[i] = list[i].ID
		}
		var err error
		if hourly, err = a.Hourly(r.Context(), ids, now, 24); err != nil {
			c.cfg.Report(r, err)
			kv.Analytics = false
		}
	}
	for _, k := range list {
		row := keyRow{KeyView: k, Badge: badge(k, now)}
		if kv.Analytics {
			h := hourly[k.ID]
			if h == nil {
				h = make([]uint64, 24)
			}
			for _, n := range h {
				row.Uses24h += n
			}
			row.Sparkline = sparkline(h, k.Name)
		}
		kv.Rows = append(kv.Rows, row)
	}
	c.render(w, r, http.StatusOK, "keys", view{Session: sessionOf(r), Title: "API keys", Nav: "keys", Data: kv})
}

// formView is the create form, blank or as submitted with its problem.
type formView struct {
	Nonce       string
	Catalog     []string
	Name, Owner string
	Env         string
	Perms       map[string]bool
	Expires     string
	PerSecond   string
	Burst       string
	Problem     string
	Scope       string
}

func (c *Console) newKey(w http.ResponseWriter, r *http.Request) {
	ses := sessionOf(r)
	fv := formView{Nonce: c.sessions.newForm(ses), Catalog: c.cfg.Admin.Catalog().Names(), Env: "live",
		Perms: map[string]bool{keyledger.PermissionAll: true}, Owner: ses.Scope, Scope: ses.Scope}
	c.render(w, r, http.StatusOK, "new", view{Session: ses, Title: "Create API key", Nav: "keys", Data: fv})
}

// secretView is the one page that shows a secret.
type secretView struct {
	Secret     string
	Key        admin.KeyView
	AppliedBy  string
	Pending    []string
	Warning    string
	RolledFrom string
	OldExpires *time.Time
}

func (c *Console) create(w http.ResponseWriter, r *http.Request) {
	ses := sessionOf(r)
	f := r.PostForm
	fv := formView{Catalog: c.cfg.Admin.Catalog().Names(), Name: f.Get("name"), Owner: f.Get("owner"), Env: f.Get("environment"),
		Perms: map[string]bool{}, Expires: f.Get("expires_at"), PerSecond: f.Get("rate_per_second"), Burst: f.Get("rate_burst"), Scope: ses.Scope}
	for _, p := range f["permissions"] {
		fv.Perms[p] = true
	}
	nonce := f.Get("nonce")
	if prev, ok := c.sessions.useForm(ses, nonce); !ok {
		c.alreadySubmitted(w, r, prev)
		return
	}
	problem := func(err error) {
		c.sessions.formFailed(ses, nonce)
		fv.Nonce, fv.Problem = nonce, keyledger.ErrorMessage(err)
		c.render(w, r, c.cfg.Status(err), "new", view{Session: ses, Title: "Create API key", Nav: "keys", Data: fv})
	}
	req := admin.CreateRequest{Name: fv.Name, Owner: fv.Owner, Permissions: f["permissions"]}
	env, err := keyledger.ParseEnvironment(fv.Env)
	if err != nil {
		problem(err)
		return
	}
	req.Environment = env
	if fv.Expires != "" {
		t, err := time.ParseInLocation("2006-01-02T15:04", fv.Expires, time.UTC)
		if err != nil {
			problem(keyledger.Errorf(keyledger.Invalid, "expiry must be a date and time (UTC)"))
			return
		}
		req.ExpiresAt = &t
	}
	if fv.PerSecond != "" || fv.Burst != "" {
		ps, err1 := strconv.ParseFloat(fv.PerSecond, 64)
		b, err2 := strconv.Atoi(fv.Burst)
		if err1 != nil || err2 != nil {
			problem(keyledger.Errorf(keyledger.Invalid, "a rate limit needs both a rate per second and a burst"))
			return
		}
		req.RateLimit = &keyledger.RateLimit{PerSecond: ps, Burst: b}
	}
	res, err := c.cfg.Admin.Create(r.Context(), req, c.write(r))
	if err != nil {
		c.cfg.Report(r, err)
		problem(err)
		return
	}
	c.sessions.formMade(ses, nonce, res.ID)
	c.render(w, r, http.StatusCreated, "secret", view{Session: ses, Title: "Your new API key", Nav: "keys", Data: secretView{
		Secret: res.Secret, Key: res.KeyView, AppliedBy: res.AppliedBy, Pending: res.PendingNodes, Warning: res.Warning}})
}

// alreadySubmitted answers a form that issues a secret sent a second
// time (a reload, the back button): nothing is issued again, and the
// secret is not shown again.
func (c *Console) alreadySubmitted(w http.ResponseWriter, r *http.Request, keyID string) {
	msg := "This form was already submitted, or it expired; nothing was issued again. Secrets are shown once only."
	if keyID != "" && keyID != "-" {
		msg += " The key it made is " + keyID + "."
	}
	c.plainError(w, r, http.StatusConflict, msg)
}

// historyRow is one ledger event of a key.
type historyRow struct {
	Seq      uint64
	Type     string
	At       time.Time
	Actor    string
	ActorIP  string
	Reason   string
	SignedBy string
	Rejected string
}

// Ranges of the key page's usage chart.
var ranges = []struct {
	Name     string
	Span     time.Duration
	Interval analytics.Interval
}{
	{"1h", time.Hour, analytics.Minute},
	{"24h", 24 * time.Hour, analytics.Hour},
	{"7d", 7 * 24 * time.Hour, analytics.Hour},
	{"30d", 30 * 24 * time.Hour, analytics.Day},
}

type keyPageView struct {
	Key       admin.KeyView
	Badge     string
	Metadata  string
	History   []historyRow
	HistErr   string
	Analytics bool
	// AnalyticsErr says why usage is missing when analytics is on.
	AnalyticsErr string
	Range        string
	Ranges       []string
	Chart        template.HTML
	Total        uint64
	Sources      []analytics.SourceCount
	Alerts       []analytics.Alert
	Nonce        string
	Graces       []string
}

func (c *Console) key(w http.ResponseWriter, r *http.Request) {
	ses := sessionOf(r)
	id := r.PathValue("id")
	k, err := c.cfg.Admin.Get(r.Context(), id, c.write(r))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	now := c.cfg.Now()
	kp := keyPageView{Key: *k, Badge: badge(*k, now), Range: r.URL.Query().Get("range"), Graces: graceNames}
	if len(k.Metadata) > 0 {
		var b bytes.Buffer
		if json.Indent(&b, k.Metadata, "", "  ") == nil {
			kp.Metadata = b.String()
		}
	}
	if kp.Range == "" {
		kp.Range = "24h"
	}
	rng := -1
	for i, rg := range ranges {
		kp.Ranges = append(kp.Ranges, rg.Name)
		if rg.Name == kp.Range {
			rng = i
		}
	}
	if rng < 0 {
		c.plainError(w, r, http.StatusBadRequest, "The range must be 1h, 24h, 7d or 30d.")
		return
	}
	recs, err := c.cfg.Admin.History(r.Context(), id, c.write(r))
	if err != nil {
		c.cfg.Report(r, err)
		kp.HistErr = keyledger.ErrorMessage(err)
	}
	for _, rec := range recs {
		h := rec.Event.Head()
		kp.History = append(kp.History, historyRow{Seq: rec.Seq, Type: string(h.Type), At: h.At, Actor: h.Actor, ActorIP: h.ActorIP,
			Reason: reasonOf(rec.Event), SignedBy: rec.Signer, Rejected: rec.Rejected})
	}
	if a := c.cfg.Analytics(); a != nil {
		kp.Analytics = true
		rg := ranges[rng]
		from := now.Add(-rg.Span)
		pts, err := a.Usage(r.Context(), analytics.UsageQuery{KeyID: id, From: from, To: now, Interval: rg.Interval})
		if err == nil {
			kp.Chart, kp.Total = usageChart(pts, from, now, rg.Interval, "Verifications of "+k.Name+" over the last "+rg.Name)
			kp.Sources, err = a.TopSources(r.Context(), id, from, now, 10)
		}
		if err == nil {
			kp.Alerts, err = a.Alerts(r.Context(), analytics.AlertQuery{KeyID: id, From: now.Add(-30 * 24 * time.Hour), To: now, Limit: 100})
		}
		if err != nil {
			c.cfg.Report(r, err)
			kp.AnalyticsErr = keyledger.ErrorMessage(err)
		}
	}
	if k.Status == keyledger.StatusActive {
		kp.Nonce = c.sessions.newForm(ses)
	}
	c.render(w, r, http.StatusOK, "key", view{Session: ses, Title: k.Name, Nav: "keys", Data: kp})
}

// reasonOf is an event's free-text reason, for the events that have one.
func reasonOf(ev events.Event) string {
	switch e := ev.(type) {
	case *events.KeyRevoked:
		return e.Reason
	case *events.KeyLeakReported:
		return strings.TrimSpace("leak reported by " + e.Source + " " + e.URL + " (" + strings.ReplaceAll(e.Action, "_", " ") + ")")
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return ""
	}
	var v struct {
		Reason string `json:"reason"`
	}
	json.Unmarshal(b, &v)
	return v.Reason
}

func (c *Console) keyURL(id string) string { return Prefix + "keys/" + template.URLQueryEscaper(id) }

func (c *Console) revoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	k, err := c.cfg.Admin.Get(r.Context(), id, c.write(r))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if r.PostForm.Get("confirm") != k.Name {
		c.plainError(w, r, http.StatusBadRequest, "The name you typed does not match the key's name; nothing was revoked.")
		return
	}
	reason := strings.TrimSpace(r.PostForm.Get("reason"))
	if reason == "" {
		c.plainError(w, r, http.StatusBadRequest, "Give a reason: it goes into the ledger with the revocation. Nothing was revoked.")
		return
	}
	res, err := c.cfg.Admin.Revoke(r.Context(), id, reason, c.write(r))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	msg := "Revoked. There is no undo."
	if res.AppliedBy != "" {
		msg += " Applied by " + res.AppliedBy + " nodes."
	}
	if len(res.PendingNodes) > 0 {
		msg += " Not yet applied by: " + strings.Join(res.PendingNodes, ", ") + " (refusing: " + strings.Join(res.RefusingNodes, ", ") + ")."
	}
	c.sessions.setFlash(sessionOf(r), msg)
	http.Redirect(w, r, c.keyURL(id), http.StatusSeeOther)
}

// graceNames are the roll grace periods the console offers.
var graceNames = []string{"0s", "15m", "1h", "24h"}

func (c *Console) roll(w http.ResponseWriter, r *http.Request) {
	ses := sessionOf(r)
	id := r.PathValue("id")
	g := r.PostForm.Get("grace")
	var grace time.Duration
	switch g {
	case "0s", "15m", "1h", "24h":
		grace, _ = time.ParseDuration(g)
	default:
		c.plainError(w, r, http.StatusBadRequest, "The old key's grace period must be 0s, 15m, 1h or 24h; nothing was rolled.")
		return
	}
	nonce := r.PostForm.Get("nonce")
	if prev, ok := c.sessions.useForm(ses, nonce); !ok {
		c.alreadySubmitted(w, r, prev)
		return
	}
	res, err := c.cfg.Admin.Roll(r.Context(), id, grace, c.write(r))
	if err != nil {
		c.sessions.formFailed(ses, nonce)
		c.fail(w, r, err)
		return
	}
	c.sessions.formMade(ses, nonce, res.ID)
	sv := secretView{Secret: res.Secret, Key: res.KeyView, AppliedBy: res.AppliedBy, Pending: res.PendingNodes, RolledFrom: id}
	if old, err := c.cfg.Admin.Get(r.Context(), id, c.write(r)); err == nil {
		sv.OldExpires = old.ExpiresAt
	}
	c.render(w, r, http.StatusCreated, "secret", view{Session: ses, Title: "Your rolled API key", Nav: "keys", Data: sv})
}

func (c *Console) setDisabled(off bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		res, err := c.cfg.Admin.SetDisabled(r.Context(), id, off, strings.TrimSpace(r.PostForm.Get("reason")), c.write(r))
		if err != nil {
			c.fail(w, r, err)
			return
		}
		msg := "Enabled."
		if off {
			msg = "Disabled: the key is refused until enabled again."
		}
		if res.AppliedBy != "" {
			msg += " Applied by " + res.AppliedBy + " nodes."
		}
		c.sessions.setFlash(sessionOf(r), msg)
		http.Redirect(w, r, c.keyURL(id), http.StatusSeeOther)
	}
}

type activityView struct {
	Analytics    bool
	AnalyticsErr string
	Chart        template.HTML
	Total        uint64
	Alerts       []analytics.Alert
	Rules        []string
	Rule, KeyID  string
	Since        string
	Sinces       []string
	Fleet        []admin.NodeView
	Scoped       bool
	Audit        *auditView
}

// auditView is the activity page's card of the provable audit.
type auditView struct {
	Checkpoint  bool
	Size        int64
	Root        string
	At          time.Time
	Signer      string
	Cosigners   []string
	Pending     int64 // events no checkpoint covers yet
	Divergences uint64
	Diverged    string
}

func (c *Console) auditCard() *auditView {
	a := c.cfg.Audit
	if a == nil {
		return nil
	}
	st := a.Stats()
	v := &auditView{Pending: st.Uncovered(), Divergences: st.Divergences, Diverged: a.Diverged()}
	if s, ok := a.Latest(); ok {
		v.Checkpoint, v.Size, v.Root, v.At, v.Signer, v.Cosigners = true, s.Size, s.Root.String(), s.Time, s.Signer, s.Cosigners
	}
	return v
}

// checkpoint downloads the newest signed checkpoint: the note to keep
// outside the system and verify the ledger against later.
func (c *Console) checkpoint(w http.ResponseWriter, r *http.Request) {
	if sessionOf(r).Scope != "" {
		c.plainError(w, r, http.StatusForbidden, "The ledger's checkpoint spans owners: this admin key is limited to one.")
		return
	}
	var s audit.Signed
	ok := false
	if c.cfg.Audit != nil {
		s, ok = c.cfg.Audit.Latest()
	}
	if !ok {
		c.plainError(w, r, http.StatusNotFound, "No checkpoint has been published yet.")
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="keyledger-checkpoint-%d.note"`, s.Size))
	w.Write(s.Note)
}

var sinces = map[string]time.Duration{"1h": time.Hour, "24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "30d": 30 * 24 * time.Hour}

func (c *Console) activity(w http.ResponseWriter, r *http.Request) {
	ses := sessionOf(r)
	q := r.URL.Query()
	av := activityView{Rules: analytics.Rules(), Rule: q.Get("rule"), KeyID: strings.TrimSpace(q.Get("key")), Since: q.Get("since"),
		Sinces: []string{"1h", "24h", "7d", "30d"}, Scoped: ses.Scope != ""}
	if av.Since == "" {
		av.Since = "24h"
	}
	span, ok := sinces[av.Since]
	if !ok {
		c.plainError(w, r, http.StatusBadRequest, "Show alerts of the last 1h, 24h, 7d or 30d.")
		return
	}
	if av.Scoped {
		// The dashboard spans owners: an owner-scoped admin key sees its
		// own keys' pages only (as with the API's /v1/nodes and analytics).
		c.render(w, r, http.StatusOK, "activity", view{Session: ses, Title: "Activity", Nav: "activity", Data: av})
		return
	}
	av.Fleet = c.cfg.Admin.Nodes()
	av.Audit = c.auditCard()
	now := c.cfg.Now()
	if a := c.cfg.Analytics(); a != nil {
		av.Analytics = true
		from := now.Add(-time.Hour)
		pts, err := a.Usage(r.Context(), analytics.UsageQuery{All: true, From: from, To: now, Interval: analytics.Minute})
		if err == nil {
			av.Chart, av.Total = usageChart(pts, from, now, analytics.Minute, "Verifications per minute over the last hour, all keys")
			av.Alerts, err = a.Alerts(r.Context(), analytics.AlertQuery{Rule: av.Rule, KeyID: av.KeyID, From: now.Add(-span), To: now, Limit: 200})
		}
		if err != nil {
			if keyledger.ErrorCode(err) == keyledger.Invalid {
				c.fail(w, r, err)
				return
			}
			c.cfg.Report(r, err)
			av.AnalyticsErr = keyledger.ErrorMessage(err)
		}
	}
	c.render(w, r, http.StatusOK, "activity", view{Session: ses, Title: "Activity", Nav: "activity", Data: av})
}
