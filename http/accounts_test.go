package http_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/client"
	khttp "github.com/keyledger/keyledger/http"
	"github.com/keyledger/keyledger/http/openapitest"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/node/nodetest"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
)

const accountsToken = "accounts-test-token-0123456789"

// fakeQuotas stands for the fleet's counters, and remembers whom it was
// asked about: a refused caller must not even reach them.
type fakeQuotas struct {
	mu    sync.Mutex
	asked []string
}

func (f *fakeQuotas) Quota(ctx context.Context, owner string, now time.Time) (keyledger.Quota, error) {
	f.mu.Lock()
	f.asked = append(f.asked, owner)
	f.mu.Unlock()
	start := keyledger.MonthStart(now)
	return keyledger.Quota{Owner: owner, Plan: "pro", Month: start.Format("2006-01"), Used: 42, Limit: 1000,
		ResetsAt: start.AddDate(0, 1, 0)}, nil
}

func (f *fakeQuotas) askedAbout() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

// accountsAPI is the admin API of one node over a real embedded
// JetStream, without the rest of a node: the quota source is the test's.
type accountsAPI struct {
	base string
	svc  *admin.Service
}

func mustOpenAccounts(t *testing.T, o khttp.RouterOptions) *accountsAPI {
	t.Helper()
	env := natstest.MustStart(t)
	p := projector.New(env.JS, projector.Options{Records: true, Keyring: env.Keyring})
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := admin.New(admin.Config{Log: env.MustLog(t), Projector: p, Logger: log})
	o.Admin, o.Verifier, o.Token, o.NoConsole, o.Logger = svc, verifier.New(p.Table(), verifier.Config{}), accountsToken, true, log
	srv := httptest.NewServer(khttp.NewRouter(o))
	t.Cleanup(srv.Close)
	return &accountsAPI{base: srv.URL, svc: svc}
}

// call sends one request through the OpenAPI-validating transport: every
// answer, and every request the API accepted, must match the document.
func (a *accountsAPI) call(t *testing.T, method, path, token, body string, hdr ...string) (int, map[string][]string, []byte) {
	t.Helper()
	c := &nodetest.Caller{T: t, Base: a.base}
	return c.Call(method, path, token, body, hdr...)
}

// mustCall is call expecting status, decoding the answer into out.
func (a *accountsAPI) mustCall(t *testing.T, status int, method, path, token, body string, out any, hdr ...string) map[string][]string {
	t.Helper()
	code, h, b := a.call(t, method, path, token, body, hdr...)
	if code != status {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, b, status)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	return h
}

// refused checks an error answer: its status, code, reason and message.
func (a *accountsAPI) refused(t *testing.T, status int, code keyledger.Code, reason, msg, method, path, token, body string, hdr ...string) {
	t.Helper()
	got, _, b := a.call(t, method, path, token, body, hdr...)
	e := envelope(t, b)
	if got != status || e.Code != code || e.Reason != reason || !strings.Contains(e.Message, msg) {
		t.Fatalf("%s %s: %d %+v, want %d %s/%s containing %q", method, path, got, e, status, code, reason, msg)
	}
}

// adminKey issues an admin key, scoped to owner when owner is not "".
func (a *accountsAPI) adminKey(t *testing.T, owner string) string {
	t.Helper()
	body := `{"name":"ops","environment":"live","permissions":["admin"]}`
	if owner != "" {
		body = `{"name":"ops","environment":"live","owner":"` + owner + `","permissions":["admin"],"admin_scope":{"owner":"` + owner + `"}}`
	}
	var k createdKey
	a.mustCall(t, 201, "POST", "/v1/keys", accountsToken, body, &k)
	return k.Key
}

type planJSON struct {
	keyledger.PlanRecord
	Changed   []string `json:"changed"`
	AppliedBy string   `json:"applied_by"`
}

func TestAccountsAPI_plans(t *testing.T) {
	a := mustOpenAccounts(t, khttp.RouterOptions{})
	var pro planJSON
	t.Run("create", func(t *testing.T) {
		h := a.mustCall(t, 201, "POST", "/v1/plans", accountsToken,
			`{"name":"pro","monthly_quota":1000,"rate_limit":{"per_second":10,"burst":20},"on_outage":"open"}`, &pro)
		if pro.Name != "pro" || pro.MonthlyQuota != 1000 || pro.RateLimit == nil || pro.OnOutage != "open" || pro.Revision == 0 ||
			pro.UpdatedBy != khttp.BootstrapActor {
			t.Fatalf("created %+v", pro)
		}
		if loc := h["Location"]; len(loc) != 1 || loc[0] != "/v1/plans/pro" {
			t.Fatalf("Location %v", loc)
		}
	})
	t.Run("a second create is 409 already_exists", func(t *testing.T) {
		a.refused(t, 409, keyledger.Conflict, keyledger.ReasonAlreadyExists, `plan "pro" already exists`,
			"POST", "/v1/plans", accountsToken, `{"name":"pro","monthly_quota":1}`)
	})
	for _, tc := range []struct{ name, body, msg string }{
		{"bad name", `{"name":"Pro Plan","monthly_quota":1}`, "lower-case"},
		{"no name", `{"monthly_quota":1}`, "plan name must be 1 to 32"},
		{"negative quota", `{"name":"neg","monthly_quota":-1}`, "monthly_quota must be between"},
		{"fractional quota", `{"name":"frac","monthly_quota":0.5}`, `"monthly_quota" must be of JSON type int64`},
		{"bad on_outage", `{"name":"x","on_outage":"ajar"}`, "on_outage must be"},
		{"unknown field", `{"name":"x","monthly_qouta":1}`, `unknown field "monthly_qouta"`},
		{"unknown nested field", `{"name":"x","rate_limit":{"per_second":1,"burst":1,"brust":1}}`, `unknown field "brust"`},
		{"a record's field", `{"name":"x","revision":7}`, `unknown field "revision"`},
		{"not JSON", `{"name":`, "truncated"},
		{"two values", `{"name":"x"}{}`, "a single JSON object"},
	} {
		t.Run("invalid: "+tc.name, func(t *testing.T) {
			a.refused(t, 400, keyledger.Invalid, "", tc.msg, "POST", "/v1/plans", accountsToken, tc.body)
		})
	}
	t.Run("read", func(t *testing.T) {
		var got keyledger.PlanRecord
		h := a.mustCall(t, 200, "GET", "/v1/plans/pro", accountsToken, "", &got)
		if got.Revision != pro.Revision || got.MonthlyQuota != 1000 || h["Etag"][0] != etagOf(pro.Revision) {
			t.Fatalf("got %+v, ETag %v", got, h["Etag"])
		}
		a.refused(t, 404, keyledger.NotFound, "", `no plan "nope"`, "GET", "/v1/plans/nope", accountsToken, "")
		a.refused(t, 400, keyledger.Invalid, "", "unknown query parameter", "GET", "/v1/plans?name=pro", accountsToken, "")
		a.refused(t, 401, keyledger.Unauthorized, "", "Invalid or missing API key", "GET", "/v1/plans/pro", "", "")
	})
	t.Run("patch", func(t *testing.T) {
		var up planJSON
		h := a.mustCall(t, 200, "PATCH", "/v1/plans/pro", accountsToken, `{"monthly_quota":5000,"rate_limit":null}`, &up,
			"Content-Type", "application/merge-patch+json", "If-Match", etagOf(pro.Revision))
		if up.MonthlyQuota != 5000 || up.RateLimit != nil || up.OnOutage != "open" || up.Revision <= pro.Revision ||
			strings.Join(up.Changed, ",") != "monthly_quota,rate_limit" || h["Etag"][0] != etagOf(up.Revision) {
			t.Fatalf("updated %+v, ETag %v", up, h["Etag"])
		}
		t.Run("a stale If-Match is 412 revision_mismatch", func(t *testing.T) {
			a.refused(t, 412, keyledger.Conflict, keyledger.ReasonRevisionMismatch, "read it again",
				"PATCH", "/v1/plans/pro", accountsToken, `{"monthly_quota":1}`, "If-Match", etagOf(pro.Revision))
			var got keyledger.PlanRecord
			if a.mustCall(t, 200, "GET", "/v1/plans/pro", accountsToken, "", &got); got.MonthlyQuota != 5000 {
				t.Fatalf("the stale patch landed: %+v", got)
			}
		})
		for _, tc := range []struct{ name, body, msg string }{
			{"the name", `{"name":"max"}`, "name cannot be changed"},
			{"unknown field", `{"quota":1}`, `unknown field "quota"`},
			{"negative quota", `{"monthly_quota":-1}`, "monthly_quota must be between"},
			{"null quota", `{"monthly_quota":null}`, "monthly_quota must be an integer"},
			{"bad on_outage", `{"on_outage":"ajar"}`, "on_outage must be"},
			{"nothing", `{}`, "names no field"},
		} {
			t.Run("invalid: "+tc.name, func(t *testing.T) {
				a.refused(t, 400, keyledger.Invalid, "", tc.msg, "PATCH", "/v1/plans/pro", accountsToken, tc.body)
			})
		}
		a.refused(t, 404, keyledger.NotFound, "", `no plan "nope"`, "PATCH", "/v1/plans/nope", accountsToken, `{"monthly_quota":1}`)
	})
	t.Run("list", func(t *testing.T) {
		a.mustCall(t, 201, "POST", "/v1/plans", accountsToken, `{"name":"free","monthly_quota":100}`, nil)
		var list admin.PlanList
		a.mustCall(t, 200, "GET", "/v1/plans", accountsToken, "", &list)
		if len(list.Plans) != 2 || list.Plans[0].Name != "free" || list.Plans[1].Name != "pro" {
			t.Fatalf("list %+v", list)
		}
	})
}

func etagOf(rev uint64) string { return `"` + strconv.FormatUint(rev, 10) + `"` }

type ownerJSON struct {
	keyledger.Owner
	AppliedBy string `json:"applied_by"`
}

func TestAccountsAPI_owners(t *testing.T) {
	quotas := &fakeQuotas{}
	a := mustOpenAccounts(t, khttp.RouterOptions{Quotas: quotas})
	a.mustCall(t, 201, "POST", "/v1/plans", accountsToken, `{"name":"pro","monthly_quota":1000}`, nil)

	t.Run("a plan the ledger does not hold is refused", func(t *testing.T) {
		a.refused(t, 400, keyledger.Invalid, "", `plan "enterprise" does not exist`, "PUT", "/v1/owners/acme", accountsToken, `{"plan":"enterprise"}`)
		a.refused(t, 404, keyledger.NotFound, "", `no owner "acme"`, "GET", "/v1/owners/acme", accountsToken, "")
	})
	for _, tc := range []struct{ name, body, msg string }{
		{"unknown field", `{"plan":"pro","owner":"acme"}`, `unknown field "owner"`},
		{"bad plan name", `{"plan":"PRO"}`, "lower-case"},
		{"metadata not an object", `{"metadata":"vip"}`, "metadata must be a JSON object"},
		{"no body", ``, "request body is empty"},
	} {
		t.Run("invalid: "+tc.name, func(t *testing.T) {
			a.refused(t, 400, keyledger.Invalid, "", tc.msg, "PUT", "/v1/owners/acme", accountsToken, tc.body)
		})
	}
	var created ownerJSON
	t.Run("create, then replace", func(t *testing.T) {
		h := a.mustCall(t, 201, "PUT", "/v1/owners/acme", accountsToken, `{"plan":"pro","metadata":{"billing_id":"cus_1"}}`, &created)
		if created.Name != "acme" || created.Plan != "pro" || string(created.Metadata) != `{"billing_id":"cus_1"}` || created.Revision == 0 {
			t.Fatalf("created %+v", created)
		}
		if loc := h["Location"]; len(loc) != 1 || loc[0] != "/v1/owners/acme" {
			t.Fatalf("Location %v", loc)
		}
		var rep ownerJSON
		h = a.mustCall(t, 200, "PUT", "/v1/owners/acme", accountsToken, `{"plan":"pro"}`, &rep)
		if rep.Metadata != nil || rep.Revision <= created.Revision || h["Location"] != nil {
			t.Fatalf("replaced %+v, Location %v", rep, h["Location"])
		}
		var got keyledger.Owner
		h = a.mustCall(t, 200, "GET", "/v1/owners/acme", accountsToken, "", &got)
		if got.Revision != rep.Revision || got.Plan != "pro" || h["Etag"][0] != etagOf(rep.Revision) {
			t.Fatalf("got %+v ETag %v", got, h["Etag"])
		}
	})
	t.Run("an owner's name is one path segment, percent-encoded", func(t *testing.T) {
		path := "/v1/owners/" + url.PathEscape("team/α b")
		a.mustCall(t, 201, "PUT", path, accountsToken, `{"plan":"pro"}`, nil)
		var got keyledger.Owner
		if a.mustCall(t, 200, "GET", path, accountsToken, "", &got); got.Name != "team/α b" {
			t.Fatalf("got %+v", got)
		}
	})
	t.Run("quota", func(t *testing.T) {
		var q khttp.OwnerQuota
		a.mustCall(t, 200, "GET", "/v1/owners/acme/quota", accountsToken, "", &q)
		if q.Owner != "acme" || q.Plan != "pro" || q.Used != 42 || q.Limit != 1000 || q.ExactUsed != nil || q.ResetsAt.IsZero() {
			t.Fatalf("quota %+v", q)
		}
		a.refused(t, 400, keyledger.Invalid, "", "unknown query parameter", "GET", "/v1/owners/acme/quota?month=2026-01", accountsToken, "")
	})
}

// Without a quota source the quota endpoint says why it cannot answer;
// with analytics on, the answer carries ClickHouse's exact count.
func TestAccountsAPI_quotaSources(t *testing.T) {
	t.Run("no quota source: 503", func(t *testing.T) {
		a := mustOpenAccounts(t, khttp.RouterOptions{})
		a.refused(t, 503, keyledger.Unavailable, "", "does not enforce plan quotas", "GET", "/v1/owners/acme/quota", accountsToken, "")
	})
	t.Run("analytics on: exact_used", func(t *testing.T) {
		an := mustOpenAnalytics(t)
		a := mustOpenAccounts(t, khttp.RouterOptions{Quotas: &fakeQuotas{}, AnalyticsLater: func() *analytics.Analytics { return an }})
		code, _, b := a.call(t, "GET", "/v1/owners/acme/quota", accountsToken, "")
		if code != 200 || !strings.Contains(string(b), `"exact_used":0`) || !strings.Contains(string(b), `"used":42`) {
			t.Fatalf("quota: %d %s", code, b)
		}
	})
}

// An owner-scoped admin key may read its own owner, plan and quota, and
// nothing of another owner; it may write no plan and no owner, its own
// included: plans are billing, and a customer must not pick its quota.
func TestAccountsAPI_scopedAdminKey(t *testing.T) {
	quotas := &fakeQuotas{}
	a := mustOpenAccounts(t, khttp.RouterOptions{Quotas: quotas})
	for _, body := range []string{`{"name":"pro","monthly_quota":1000}`, `{"name":"enterprise","monthly_quota":0}`} {
		a.mustCall(t, 201, "POST", "/v1/plans", accountsToken, body, nil)
	}
	a.mustCall(t, 201, "PUT", "/v1/owners/acme", accountsToken, `{"plan":"pro"}`, nil)
	a.mustCall(t, 201, "PUT", "/v1/owners/globex", accountsToken, `{"plan":"enterprise","metadata":{"vip":true}}`, nil)
	acme := a.adminKey(t, "acme")

	t.Run("its own owner, plan and quota", func(t *testing.T) {
		var o keyledger.Owner
		if a.mustCall(t, 200, "GET", "/v1/owners/acme", acme, "", &o); o.Plan != "pro" {
			t.Fatalf("owner %+v", o)
		}
		var q khttp.OwnerQuota
		if a.mustCall(t, 200, "GET", "/v1/owners/acme/quota", acme, "", &q); q.Owner != "acme" {
			t.Fatalf("quota %+v", q)
		}
		var pl keyledger.PlanRecord
		a.mustCall(t, 200, "GET", "/v1/plans/pro", acme, "", &pl)
		var list admin.PlanList
		if a.mustCall(t, 200, "GET", "/v1/plans", acme, "", &list); len(list.Plans) != 1 || list.Plans[0].Name != "pro" {
			t.Fatalf("plans %+v", list)
		}
	})
	asked := len(quotas.askedAbout())
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
	}{
		{"attack: create a plan", "POST", "/v1/plans", `{"name":"free-forever","monthly_quota":0}`, 403},
		{"attack: lift its own plan's quota", "PATCH", "/v1/plans/pro", `{"monthly_quota":0}`, 403},
		{"attack: move its own owner to a bigger plan", "PUT", "/v1/owners/acme", `{"plan":"enterprise"}`, 403},
		{"attack: rewrite another owner", "PUT", "/v1/owners/globex", `{}`, 403},
		{"attack: read another owner", "GET", "/v1/owners/globex", "", 404},
		{"attack: read an owner that does not exist", "GET", "/v1/owners/initech", "", 404},
		{"attack: read another owner's quota", "GET", "/v1/owners/globex/quota", "", 404},
		{"attack: read another owner's plan", "GET", "/v1/plans/enterprise", "", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, b := a.call(t, tc.method, tc.path, acme, tc.body)
			e := envelope(t, b)
			if code != tc.status || strings.Contains(string(b), "vip") {
				t.Fatalf("%d %+v", code, e)
			}
			if code == 403 && !strings.Contains(e.Message, "billing") {
				t.Fatalf("403 without the reason: %+v", e)
			}
		})
	}
	t.Run("nothing changed, and the counters were never asked about another owner", func(t *testing.T) {
		if got := quotas.askedAbout(); len(got) != asked {
			t.Fatalf("the quota source was asked about %v", got[asked:])
		}
		var o keyledger.Owner
		if a.mustCall(t, 200, "GET", "/v1/owners/acme", accountsToken, "", &o); o.Plan != "pro" {
			t.Fatalf("acme %+v", o)
		}
		if a.mustCall(t, 200, "GET", "/v1/owners/globex", accountsToken, "", &o); o.Plan != "enterprise" || string(o.Metadata) != `{"vip":true}` {
			t.Fatalf("globex %+v", o)
		}
		var pl keyledger.PlanRecord
		if a.mustCall(t, 200, "GET", "/v1/plans/pro", accountsToken, "", &pl); pl.MonthlyQuota != 1000 {
			t.Fatalf("pro %+v", pl)
		}
		a.refused(t, 404, keyledger.NotFound, "", "no plan", "GET", "/v1/plans/free-forever", accountsToken, "")
	})
	t.Run("an unscoped admin key may write plans", func(t *testing.T) {
		ops := a.adminKey(t, "")
		var up planJSON
		if a.mustCall(t, 200, "PATCH", "/v1/plans/pro", ops, `{"monthly_quota":2000}`, &up); !strings.HasPrefix(up.UpdatedBy, "key_") {
			t.Fatalf("updated %+v", up)
		}
	})
}

type keyJSON struct {
	ID      string             `json:"id"`
	Credits *keyledger.Credits `json:"credits"`
	Changed []string           `json:"changed"`
}

// Credits go in with a create, show in the record, change with a patch
// and go away with null.
func TestAccountsAPI_keyCredits(t *testing.T) {
	a := mustOpenAccounts(t, khttp.RouterOptions{})
	var k keyJSON
	a.mustCall(t, 201, "POST", "/v1/keys", accountsToken,
		`{"name":"metered","environment":"live","owner":"acme","credits":{"remaining":100,"refill":{"interval":"monthly","amount":100}}}`, &k)
	if k.Credits == nil || k.Credits.Remaining != 100 || k.Credits.Refill == nil || k.Credits.Refill.Interval != "monthly" {
		t.Fatalf("created %+v", k.Credits)
	}
	path := "/v1/keys/" + k.ID
	t.Run("read", func(t *testing.T) {
		var got keyJSON
		if a.mustCall(t, 200, "GET", path, accountsToken, "", &got); got.Credits == nil || got.Credits.Refill.Amount != 100 {
			t.Fatalf("got %+v", got.Credits)
		}
	})
	t.Run("patch", func(t *testing.T) {
		var up keyJSON
		a.mustCall(t, 200, "PATCH", path, accountsToken, `{"credits":{"remaining":7}}`, &up)
		if strings.Join(up.Changed, ",") != "credits" || up.Credits == nil || up.Credits.Remaining != 7 || up.Credits.Refill != nil {
			t.Fatalf("updated %+v %+v", up.Changed, up.Credits)
		}
	})
	for _, tc := range []struct{ name, method, path, body, msg string }{
		{"create: negative", "POST", "/v1/keys", `{"name":"x","environment":"live","credits":{"remaining":-1}}`, "credits.remaining"},
		{"create: unknown member", "POST", "/v1/keys", `{"name":"x","environment":"live","credits":{"remaining":1,"topup":5}}`, `unknown field "topup"`},
		{"create: bad refill", "POST", "/v1/keys", `{"name":"x","environment":"live","credits":{"remaining":1,"refill":{"interval":"weekly","amount":1}}}`, "credits.refill.interval"},
		{"patch: not an object", "PATCH", path, `{"credits":100}`, "credits must be"},
		{"patch: refill without amount", "PATCH", path, `{"credits":{"remaining":1,"refill":{"interval":"daily"}}}`, "credits.refill.amount"},
	} {
		t.Run("invalid: "+tc.name, func(t *testing.T) {
			a.refused(t, 400, keyledger.Invalid, "", tc.msg, tc.method, tc.path, accountsToken, tc.body)
		})
	}
	t.Run("null clears", func(t *testing.T) {
		var up keyJSON
		a.mustCall(t, 200, "PATCH", path, accountsToken, `{"credits":null}`, &up)
		if strings.Join(up.Changed, ",") != "credits" || up.Credits != nil {
			t.Fatalf("cleared %+v %+v", up.Changed, up.Credits)
		}
		code, _, b := a.call(t, "GET", path, accountsToken, "")
		if code != 200 || strings.Contains(string(b), `"credits"`) {
			t.Fatalf("after clearing: %d %s", code, b)
		}
	})
}

// The Go client's accounts methods against the API, through the
// validating transport.
func TestAccountsAPI_client(t *testing.T) {
	a := mustOpenAccounts(t, khttp.RouterOptions{Quotas: &fakeQuotas{}})
	c := &client.Client{BaseURL: a.base, Token: accountsToken,
		HTTP: &http.Client{Timeout: 30 * time.Second, Transport: openapitest.Transport(t, nil)}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pl, err := c.CreatePlan(ctx, keyledger.Plan{Name: "pro", MonthlyQuota: 1000}, client.WriteOptions{})
	if err != nil || pl.Revision == 0 {
		t.Fatalf("CreatePlan %+v %v", pl, err)
	}
	if _, err := c.CreatePlan(ctx, keyledger.Plan{Name: "pro"}, client.WriteOptions{}); !errors.Is(err, &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyExists}) {
		t.Fatalf("second CreatePlan: %v", err)
	}
	up, err := c.UpdatePlan(ctx, "pro", map[string]any{"monthly_quota": 10, "on_outage": "open"}, pl.Revision, client.WriteOptions{Wait: admin.WaitNone})
	if err != nil || up.MonthlyQuota != 10 || len(up.Changed) != 2 {
		t.Fatalf("UpdatePlan %+v %v", up, err)
	}
	if _, err := c.UpdatePlan(ctx, "pro", map[string]any{"monthly_quota": 1}, pl.Revision, client.WriteOptions{}); !errors.Is(err, &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonRevisionMismatch}) {
		t.Fatalf("stale UpdatePlan: %v", err)
	}
	if got, err := c.GetPlan(ctx, "pro"); err != nil || got.Revision != up.Revision {
		t.Fatalf("GetPlan %+v %v", got, err)
	}
	if list, err := c.ListPlans(ctx); err != nil || len(list) != 1 {
		t.Fatalf("ListPlans %+v %v", list, err)
	}
	o, err := c.PutOwner(ctx, "team/a", admin.OwnerRequest{Plan: "pro", Metadata: json.RawMessage(`{"tier":1}`)}, client.WriteOptions{})
	if err != nil || o.Plan != "pro" {
		t.Fatalf("PutOwner %+v %v", o, err)
	}
	if got, err := c.GetOwner(ctx, "team/a"); err != nil || got.Revision != o.Revision || string(got.Metadata) != `{"tier":1}` {
		t.Fatalf("GetOwner %+v %v", got, err)
	}
	if q, err := c.OwnerQuota(ctx, "team/a"); err != nil || q.Owner != "team/a" || q.Limit != 1000 {
		t.Fatalf("OwnerQuota %+v %v", q, err)
	}
	k, err := c.CreateKey(ctx, admin.CreateRequest{Name: "k", Environment: keyledger.EnvLive, Owner: "team/a",
		Credits: &keyledger.Credits{Remaining: 3}}, client.WriteOptions{})
	if err != nil || k.Credits == nil || k.Credits.Remaining != 3 {
		t.Fatalf("CreateKey %+v %v", k, err)
	}
	ku, err := c.UpdateKey(ctx, k.ID, map[string]any{"credits": keyledger.Credits{Remaining: 9}}, k.Revision, client.WriteOptions{})
	if err != nil || ku.Credits == nil || ku.Credits.Remaining != 9 {
		t.Fatalf("UpdateKey %+v %v", ku, err)
	}
	if ku, err = c.UpdateKey(ctx, k.ID, map[string]any{"credits": nil}, 0, client.WriteOptions{}); err != nil || ku.Credits != nil {
		t.Fatalf("UpdateKey null %+v %v", ku, err)
	}
}
