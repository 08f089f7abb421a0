package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
)

var (
	errAlreadyExists    = &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyExists}
	errRevisionMismatch = &keyledger.Error{Code: keyledger.Conflict, Reason: keyledger.ReasonRevisionMismatch}
	operator            = admin.Write{Actor: "tester"}
)

func wantErr(t *testing.T, err, target error, msg string) {
	t.Helper()
	if !errors.Is(err, target) || !strings.Contains(keyledger.ErrorMessage(err), msg) {
		t.Fatalf("err %v, want %v containing %q", err, target, msg)
	}
}

// same compares records as the API shows them: the answer to a write is
// built from its event, and must be what the projector makes of it.
func same(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func patchOf(t *testing.T, s string) admin.PlanPatch {
	t.Helper()
	var p admin.PlanPatch
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestService_Plans(t *testing.T) {
	svc, p := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var pro *admin.PlanView
	t.Run("create", func(t *testing.T) {
		var err error
		pro, err = svc.CreatePlan(ctx, keyledger.Plan{Name: "pro", MonthlyQuota: 1000, RateLimit: &keyledger.RateLimit{PerSecond: 10, Burst: 20}}, operator)
		if err != nil {
			t.Fatal(err)
		}
		if pro.Name != "pro" || pro.MonthlyQuota != 1000 || pro.Revision == 0 || pro.UpdatedBy != "tester" || !pro.UpdatedAt.Equal(t0) {
			t.Fatalf("created %+v", pro)
		}
		// The node that served the write applied it before answering.
		if rec, ok := p.Plan("pro"); !ok || !same(rec, pro.PlanRecord) {
			t.Fatalf("projector has %+v %v, want %+v", rec, ok, pro.PlanRecord)
		}
		got, err := svc.GetPlan(ctx, "pro", admin.Write{})
		if err != nil || !same(*got, pro.PlanRecord) {
			t.Fatalf("GetPlan %+v %v", got, err)
		}
	})
	t.Run("a second create of the name is already_exists, and changes nothing", func(t *testing.T) {
		_, err := svc.CreatePlan(ctx, keyledger.Plan{Name: "pro", MonthlyQuota: 5}, operator)
		wantErr(t, err, errAlreadyExists, `plan "pro" already exists`)
		if rec, _ := p.Plan("pro"); rec.MonthlyQuota != 1000 {
			t.Fatalf("the plan changed: %+v", rec)
		}
	})
	for _, tc := range []struct {
		name string
		plan keyledger.Plan
		msg  string
	}{
		{"no name", keyledger.Plan{}, "plan name must be 1 to 32"},
		{"upper case", keyledger.Plan{Name: "Pro"}, "lower-case"},
		{"a slash", keyledger.Plan{Name: "a/b"}, "lower-case"},
		{"too long", keyledger.Plan{Name: strings.Repeat("p", 33)}, "1 to 32"},
		{"negative quota", keyledger.Plan{Name: "neg", MonthlyQuota: -1}, "monthly_quota"},
		{"huge quota", keyledger.Plan{Name: "huge", MonthlyQuota: keyledger.MaxQuota + 1}, "monthly_quota"},
		{"bad on_outage", keyledger.Plan{Name: "x", OnOutage: "sometimes"}, "on_outage"},
		{"bad rate limit", keyledger.Plan{Name: "x", RateLimit: &keyledger.RateLimit{PerSecond: 0, Burst: 1}}, "per_second"},
	} {
		t.Run("invalid: "+tc.name, func(t *testing.T) {
			_, err := svc.CreatePlan(ctx, tc.plan, operator)
			wantErr(t, err, keyledger.ErrInvalid, tc.msg)
		})
	}

	t.Run("update with If-Match", func(t *testing.T) {
		up, err := svc.UpdatePlan(ctx, "pro", patchOf(t, `{"monthly_quota":2000,"rate_limit":null,"on_outage":"open"}`), pro.Revision, operator)
		if err != nil {
			t.Fatal(err)
		}
		if up.MonthlyQuota != 2000 || up.RateLimit != nil || up.OnOutage != keyledger.OutageOpen || up.Revision <= pro.Revision ||
			!slices.Equal(up.Changed, []string{"monthly_quota", "rate_limit", "on_outage"}) {
			t.Fatalf("updated %+v", up)
		}
		if rec, _ := p.Plan("pro"); !same(rec, up.PlanRecord) {
			t.Fatalf("projector has %+v, want %+v", rec, up.PlanRecord)
		}
		t.Run("a stale If-Match is revision_mismatch and writes nothing", func(t *testing.T) {
			_, err := svc.UpdatePlan(ctx, "pro", patchOf(t, `{"monthly_quota":1}`), pro.Revision, operator)
			wantErr(t, err, errRevisionMismatch, fmt.Sprintf("not %d", pro.Revision))
			if rec, _ := p.Plan("pro"); rec.MonthlyQuota != 2000 {
				t.Fatalf("the plan changed: %+v", rec)
			}
		})
		t.Run("a patch that changes nothing writes nothing", func(t *testing.T) {
			// "closed" and the default are the same.
			same, err := svc.UpdatePlan(ctx, "pro", patchOf(t, `{"monthly_quota":2000,"on_outage":"open"}`), 0, operator)
			if err != nil || len(same.Changed) != 0 || same.Revision != up.Revision {
				t.Fatalf("no-op %+v %v", same, err)
			}
		})
	})
	for _, tc := range []struct{ name, patch, msg string }{
		{"empty", `{}`, "names no field"},
		{"name", `{"name":"max"}`, "name cannot be changed"},
		{"unknown field", `{"monthly_qouta":5}`, `unknown field "monthly_qouta"`},
		{"null quota", `{"monthly_quota":null}`, "monthly_quota must be an integer"},
		{"fractional quota", `{"monthly_quota":1.5}`, "monthly_quota must be an integer"},
		{"negative quota", `{"monthly_quota":-5}`, "monthly_quota must be between"},
		{"unknown rate_limit member", `{"rate_limit":{"per_second":1,"burst":1,"brust":2}}`, "rate_limit must be"},
		{"bad on_outage", `{"on_outage":"maybe"}`, "on_outage must be"},
	} {
		t.Run("invalid patch: "+tc.name, func(t *testing.T) {
			_, err := svc.UpdatePlan(ctx, "pro", patchOf(t, tc.patch), 0, operator)
			wantErr(t, err, keyledger.ErrInvalid, tc.msg)
		})
	}
	t.Run("an unknown plan is not found", func(t *testing.T) {
		_, err := svc.UpdatePlan(ctx, "nope", patchOf(t, `{"monthly_quota":1}`), 0, operator)
		wantErr(t, err, keyledger.ErrNotFound, `no plan "nope"`)
		_, err = svc.GetPlan(ctx, "nope", admin.Write{})
		wantErr(t, err, keyledger.ErrNotFound, `no plan "nope"`)
		_, err = svc.GetPlan(ctx, "../etc", admin.Write{})
		wantErr(t, err, keyledger.ErrNotFound, "no plan")
	})
	t.Run("concurrent updates all land, none lost", func(t *testing.T) {
		before, _ := p.Plan("pro")
		const n = 6
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = svc.UpdatePlan(ctx, "pro", patchOf(t, fmt.Sprintf(`{"monthly_quota":%d}`, 10_000+i)), 0, operator)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("update %d: %v", i, err)
			}
		}
		hist, err := svc.History(ctx, keyledger.PlanID("pro"), admin.Write{})
		if err != nil {
			t.Fatal(err)
		}
		var after []uint64
		for _, r := range hist {
			if r.Seq > before.Revision {
				if r.Rejected != "" {
					t.Fatalf("event %d rejected: %s", r.Seq, r.Rejected)
				}
				after = append(after, r.Seq)
			}
		}
		rec, _ := p.Plan("pro")
		if len(after) != n || rec.Revision != after[n-1] || rec.MonthlyQuota < 10_000 {
			t.Fatalf("%d events after %d (%v), plan %+v", len(after), before.Revision, after, rec)
		}
	})
	t.Run("list", func(t *testing.T) {
		if _, err := svc.CreatePlan(ctx, keyledger.Plan{Name: "free", MonthlyQuota: 10}, operator); err != nil {
			t.Fatal(err)
		}
		list, err := svc.ListPlans(ctx, admin.Write{})
		if err != nil || len(list.Plans) != 2 || list.Plans[0].Name != "free" || list.Plans[1].Name != "pro" {
			t.Fatalf("list %+v %v", list, err)
		}
	})
}

func TestService_Owners(t *testing.T) {
	svc, p := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := svc.CreatePlan(ctx, keyledger.Plan{Name: "pro", MonthlyQuota: 1000}, operator); err != nil {
		t.Fatal(err)
	}

	t.Run("a plan the ledger does not hold is refused", func(t *testing.T) {
		_, err := svc.PutOwner(ctx, "acme", admin.OwnerRequest{Plan: "enterprise"}, operator)
		wantErr(t, err, keyledger.ErrInvalid, `plan "enterprise" does not exist`)
		if _, ok := p.Owner("acme"); ok {
			t.Fatal("the owner was written")
		}
	})
	for _, tc := range []struct {
		name, owner string
		req         admin.OwnerRequest
		msg         string
	}{
		{"no owner", "", admin.OwnerRequest{}, "owner is required"},
		{"control characters", "ac\x00me", admin.OwnerRequest{}, "printable"},
		{"bad plan name", "acme", admin.OwnerRequest{Plan: "Pro!"}, "lower-case"},
		{"metadata not an object", "acme", admin.OwnerRequest{Metadata: json.RawMessage(`[1]`)}, "metadata must be a JSON object"},
	} {
		t.Run("invalid: "+tc.name, func(t *testing.T) {
			_, err := svc.PutOwner(ctx, tc.owner, tc.req, operator)
			wantErr(t, err, keyledger.ErrInvalid, tc.msg)
		})
	}

	var created *admin.OwnerView
	t.Run("create", func(t *testing.T) {
		var err error
		created, err = svc.PutOwner(ctx, "acme", admin.OwnerRequest{Plan: "pro", Metadata: json.RawMessage(`{ "billing_id" : "cus_1" }`)}, operator)
		if err != nil {
			t.Fatal(err)
		}
		if !created.Created || created.Name != "acme" || created.Plan != "pro" || string(created.Metadata) != `{"billing_id":"cus_1"}` || created.Revision == 0 {
			t.Fatalf("created %+v", created)
		}
		if pl := p.OwnerPlan("acme"); pl == nil || pl.Name != "pro" || pl.MonthlyQuota != 1000 {
			t.Fatalf("OwnerPlan %+v", pl)
		}
		got, err := svc.GetOwner(ctx, "acme", admin.Write{})
		if err != nil || got.Revision != created.Revision || got.Plan != "pro" {
			t.Fatalf("GetOwner %+v %v", got, err)
		}
	})
	t.Run("the same record again writes nothing", func(t *testing.T) {
		again, err := svc.PutOwner(ctx, "acme", admin.OwnerRequest{Plan: "pro", Metadata: json.RawMessage(`{"billing_id":"cus_1"}`)}, operator)
		if err != nil || again.Created || again.Revision != created.Revision {
			t.Fatalf("again %+v %v", again, err)
		}
	})
	t.Run("replace", func(t *testing.T) {
		rep, err := svc.PutOwner(ctx, "acme", admin.OwnerRequest{}, operator)
		if err != nil || rep.Created || rep.Plan != "" || rep.Metadata != nil || rep.Revision <= created.Revision {
			t.Fatalf("replaced %+v %v", rep, err)
		}
		if pl := p.OwnerPlan("acme"); pl != nil {
			t.Fatalf("OwnerPlan %+v after the plan was removed", pl)
		}
	})
	t.Run("any bytes name an owner", func(t *testing.T) {
		if _, err := svc.PutOwner(ctx, "team/α", admin.OwnerRequest{Plan: "pro"}, operator); err != nil {
			t.Fatal(err)
		}
		if o, err := svc.GetOwner(ctx, "team/α", admin.Write{}); err != nil || o.Plan != "pro" {
			t.Fatalf("GetOwner %+v %v", o, err)
		}
	})
	t.Run("an owner without a record is not found", func(t *testing.T) {
		_, err := svc.GetOwner(ctx, "globex", admin.Write{})
		wantErr(t, err, keyledger.ErrNotFound, `no owner "globex"`)
	})
}

// An owner-scoped admin key reads its own owner, and its own plan, and
// nothing else; it writes neither plans nor owners, its own included:
// plans are billing.
func TestService_accountsScoped(t *testing.T) {
	svc, _ := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, pl := range []string{"pro", "enterprise"} {
		if _, err := svc.CreatePlan(ctx, keyledger.Plan{Name: pl, MonthlyQuota: 100}, operator); err != nil {
			t.Fatal(err)
		}
	}
	for owner, pl := range map[string]string{"acme": "pro", "globex": "enterprise"} {
		if _, err := svc.PutOwner(ctx, owner, admin.OwnerRequest{Plan: pl}, operator); err != nil {
			t.Fatal(err)
		}
	}
	acme := admin.Write{Actor: "key_acmeadmin", Scope: "acme"}

	t.Run("reads its own owner and plan", func(t *testing.T) {
		if o, err := svc.GetOwner(ctx, "acme", acme); err != nil || o.Plan != "pro" {
			t.Fatalf("GetOwner %+v %v", o, err)
		}
		if pl, err := svc.GetPlan(ctx, "pro", acme); err != nil || pl.Name != "pro" {
			t.Fatalf("GetPlan %+v %v", pl, err)
		}
		list, err := svc.ListPlans(ctx, acme)
		if err != nil || len(list.Plans) != 1 || list.Plans[0].Name != "pro" {
			t.Fatalf("ListPlans %+v %v", list, err)
		}
		if err := svc.CheckOwner("acme", acme); err != nil {
			t.Fatal(err)
		}
	})
	for _, tc := range []struct {
		name string
		do   func() error
		want error
	}{
		{"attack: create a plan", func() error {
			_, err := svc.CreatePlan(ctx, keyledger.Plan{Name: "free-forever"}, acme)
			return err
		}, keyledger.ErrForbidden},
		{"attack: raise its own plan's quota", func() error {
			_, err := svc.UpdatePlan(ctx, "pro", patchOf(t, `{"monthly_quota":0}`), 0, acme)
			return err
		}, keyledger.ErrForbidden},
		{"attack: move its own owner to a bigger plan", func() error {
			_, err := svc.PutOwner(ctx, "acme", admin.OwnerRequest{Plan: "enterprise"}, acme)
			return err
		}, keyledger.ErrForbidden},
		{"attack: rewrite another owner", func() error {
			_, err := svc.PutOwner(ctx, "globex", admin.OwnerRequest{}, acme)
			return err
		}, keyledger.ErrForbidden},
		{"attack: read another owner", func() error {
			_, err := svc.GetOwner(ctx, "globex", acme)
			return err
		}, keyledger.ErrNotFound},
		{"attack: another owner's quota", func() error { return svc.CheckOwner("globex", acme) }, keyledger.ErrNotFound},
		{"attack: read another owner's plan", func() error {
			_, err := svc.GetPlan(ctx, "enterprise", acme)
			return err
		}, keyledger.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("nothing changed", func(t *testing.T) {
		if o, _ := svc.GetOwner(ctx, "acme", admin.Write{}); o.Plan != "pro" {
			t.Fatalf("acme %+v", o)
		}
		if o, _ := svc.GetOwner(ctx, "globex", admin.Write{}); o.Plan != "enterprise" {
			t.Fatalf("globex %+v", o)
		}
		if pl, _ := svc.GetPlan(ctx, "pro", admin.Write{}); pl.MonthlyQuota != 100 {
			t.Fatalf("pro %+v", pl)
		}
		if _, err := svc.GetPlan(ctx, "free-forever", admin.Write{}); !errors.Is(err, keyledger.ErrNotFound) {
			t.Fatalf("free-forever: %v", err)
		}
	})
}

func TestService_credits(t *testing.T) {
	svc, p := MustOpenService(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	monthly := &keyledger.Credits{Remaining: 100, Refill: &keyledger.Refill{Interval: keyledger.RefillMonthly, Amount: 100}}

	c, err := svc.Create(ctx, admin.CreateRequest{Name: "metered", Environment: keyledger.EnvLive, Owner: "acme", Credits: monthly}, operator)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("created with credits", func(t *testing.T) {
		if c.Credits == nil || *c.Credits.Refill != *monthly.Refill || c.Credits.Remaining != 100 {
			t.Fatalf("created %+v", c.Credits)
		}
		k, err := svc.Get(ctx, c.ID, admin.Write{})
		if err != nil || k.Credits == nil || k.Credits.Remaining != 100 || k.Credits.Refill.Interval != keyledger.RefillMonthly {
			t.Fatalf("Get %+v %v", k, err)
		}
		if k, _ := p.Key(c.ID); k.Credits == nil {
			t.Fatal("the projector's record has no credits")
		}
	})
	for _, tc := range []struct {
		name    string
		credits keyledger.Credits
		msg     string
	}{
		{"negative", keyledger.Credits{Remaining: -1}, "credits.remaining"},
		{"bad interval", keyledger.Credits{Remaining: 1, Refill: &keyledger.Refill{Interval: "hourly", Amount: 1}}, "credits.refill.interval"},
		{"no refill amount", keyledger.Credits{Remaining: 1, Refill: &keyledger.Refill{Interval: keyledger.RefillDaily}}, "credits.refill.amount"},
	} {
		t.Run("invalid at create: "+tc.name, func(t *testing.T) {
			cr := tc.credits
			_, err := svc.Create(ctx, admin.CreateRequest{Name: "x", Environment: keyledger.EnvLive, Credits: &cr}, operator)
			wantErr(t, err, keyledger.ErrInvalid, tc.msg)
		})
	}
	update := func(t *testing.T, patch string) *admin.Updated {
		t.Helper()
		var pt admin.Patch
		if err := json.Unmarshal([]byte(patch), &pt); err != nil {
			t.Fatal(err)
		}
		up, err := svc.Update(ctx, c.ID, pt, 0, operator)
		if err != nil {
			t.Fatalf("%s: %v", patch, err)
		}
		return up
	}
	t.Run("patch changes them", func(t *testing.T) {
		up := update(t, `{"credits":{"remaining":5}}`)
		if !slices.Equal(up.Changed, []string{"credits"}) || up.Credits == nil || up.Credits.Remaining != 5 || up.Credits.Refill != nil {
			t.Fatalf("updated %+v %+v", up.Changed, up.Credits)
		}
	})
	t.Run("the same credits again are a top-up, not a no-op", func(t *testing.T) {
		before, _ := p.Key(c.ID)
		up := update(t, `{"credits":{"remaining":5}}`)
		if !slices.Equal(up.Changed, []string{"credits"}) || up.Revision <= before.Revision {
			t.Fatalf("updated %+v at %d, was %d", up.Changed, up.Revision, before.Revision)
		}
	})
	t.Run("invalid in a patch", func(t *testing.T) {
		for patch, msg := range map[string]string{
			`{"credits":{"remaining":-5}}`:                "credits.remaining",
			`{"credits":{"remaining":5,"extra":1}}`:       "credits must be",
			`{"credits":"lots"}`:                          "credits must be",
			`{"credits":{"refill":{"interval":"daily"}}}`: "credits.refill.amount",
		} {
			var pt admin.Patch
			json.Unmarshal([]byte(patch), &pt)
			_, err := svc.Update(ctx, c.ID, pt, 0, operator)
			wantErr(t, err, keyledger.ErrInvalid, msg)
		}
	})
	t.Run("rolled, the new key carries them", func(t *testing.T) {
		r, err := svc.Roll(ctx, c.ID, 0, operator)
		if err != nil {
			t.Fatal(err)
		}
		if r.Credits == nil || r.Credits.Remaining != 5 {
			t.Fatalf("rolled %+v", r.Credits)
		}
		c = &r.Created
	})
	t.Run("null clears them, and again is nothing", func(t *testing.T) {
		up := update(t, `{"credits":null}`)
		if !slices.Equal(up.Changed, []string{"credits"}) || up.Credits != nil {
			t.Fatalf("cleared %+v %+v", up.Changed, up.Credits)
		}
		if k, _ := p.Key(c.ID); k.Credits != nil {
			t.Fatalf("the projector still has %+v", k.Credits)
		}
		if up := update(t, `{"credits":null}`); len(up.Changed) != 0 {
			t.Fatalf("a second clear changed %v", up.Changed)
		}
	})
}
