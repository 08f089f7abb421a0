package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	khttp "github.com/keyledger/keyledger/http"
	"github.com/keyledger/keyledger/http/openapitest"
	"github.com/keyledger/keyledger/node/nodetest"
)

// TestCLI_PlansOwnersCredits drives plans, owners and credits through the
// CLI against a real node, every exchange checked against the OpenAPI
// document.
func TestCLI_PlansOwnersCredits(t *testing.T) {
	dir := t.TempDir()
	n := nodetest.MustOpen(t, dir, io.Discard)
	prev := httpClient.Transport
	httpClient.Transport = openapitest.Transport(t, http.DefaultTransport)
	t.Cleanup(func() { httpClient.Transport = prev })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(ctx, append(args, "--url", n.URL(), "--data", dir), &out, &errb)
		return code, out.String(), errb.String()
	}
	ok := func(t *testing.T, args ...string) string {
		t.Helper()
		code, out, errOut := cli(args...)
		if code != 0 {
			t.Fatalf("%v: exit %d\n%s%s", args, code, out, errOut)
		}
		return out
	}
	has := func(t *testing.T, what, out string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Fatalf("%s: no %q in\n%s", what, w, out)
			}
		}
	}
	row := func(name, value string) string { return fmt.Sprintf("%-14s %s\n", name, value) }

	t.Run("plans", func(t *testing.T) {
		out := ok(t, "plans", "create", "--name", "pro", "--monthly-quota", "1000", "--rate", "10", "--burst", "20")
		has(t, "create", out, "Created plan pro, applied by 1/1", row("monthly_quota", "1000"), row("rate_limit", "10/s burst 20"),
			row("on_outage", "closed"))

		var basic admin.PlanView
		out = ok(t, "plans", "create", "--name", "basic", "--rate", "5", "--on-outage", "open", "--json")
		if err := json.Unmarshal([]byte(out), &basic); err != nil || basic.Name != "basic" || basic.MonthlyQuota != 0 ||
			basic.RateLimit == nil || *basic.RateLimit != (keyledger.RateLimit{PerSecond: 5, Burst: 10}) || basic.OnOutage != "open" || basic.Revision == 0 {
			t.Fatalf("create --json: %v %+v\n%s", err, basic, out)
		}
		if code, _, errOut := cli("plans", "create", "--name", "basic"); code != 1 || !strings.Contains(errOut, "already_exists") {
			t.Fatalf("create twice: %d %s", code, errOut)
		}

		out = ok(t, "plans", "list")
		has(t, "list", out, "NAME", "MONTHLY_QUOTA", "RATE_LIMIT", "ON_OUTAGE")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[1], "basic ") || !strings.Contains(lines[1], "none") || !strings.Contains(lines[1], "open") ||
			!strings.HasPrefix(lines[2], "pro ") || !strings.Contains(lines[2], "1000") || !strings.Contains(lines[2], "10/s burst 20") {
			t.Fatalf("list:\n%s", out)
		}
		var list admin.PlanList
		if err := json.Unmarshal([]byte(ok(t, "plans", "list", "--json")), &list); err != nil || len(list.Plans) != 2 ||
			list.Plans[0].Name != "basic" || list.Plans[1].Name != "pro" {
			t.Fatalf("list --json: %v %+v", err, list)
		}

		has(t, "show", ok(t, "plans", "show", "pro"), row("name", "pro"), row("monthly_quota", "1000"), row("updated_by", "admin-token"))
		var pro keyledger.PlanRecord
		if err := json.Unmarshal([]byte(ok(t, "plans", "show", "pro", "--json")), &pro); err != nil || pro.MonthlyQuota != 1000 || pro.Revision == 0 {
			t.Fatalf("show --json: %v %+v", err, pro)
		}
		if code, _, errOut := cli("plans", "show", "nope"); code != 1 || !strings.Contains(errOut, `not_found: no plan "nope"`) {
			t.Fatalf("show a missing plan: %d %s", code, errOut)
		}

		// Only the flags given go into the patch: the rate stays.
		out = ok(t, "plans", "update", "pro", "--monthly-quota", "2000", "--if-match", fmt.Sprint(pro.Revision))
		has(t, "update", out, "Updated plan pro (monthly_quota), applied by 1/1", row("monthly_quota", "2000"), row("rate_limit", "10/s burst 20"))

		// The revision read before that update is stale now: the API's 412.
		var now keyledger.PlanRecord
		if err := json.Unmarshal([]byte(ok(t, "plans", "show", "pro", "--json")), &now); err != nil || now.Revision <= pro.Revision {
			t.Fatalf("revision after the update: %v %+v", err, now)
		}
		code, _, errOut := cli("plans", "update", "pro", "--monthly-quota", "1", "--if-match", fmt.Sprint(pro.Revision))
		if code != 1 || !strings.Contains(errOut, fmt.Sprintf("conflict (revision_mismatch): plan pro is at revision %d, not %d: read it again", now.Revision, pro.Revision)) ||
			!strings.Contains(errOut, "HTTP 412") {
			t.Fatalf("stale --if-match: %d %s", code, errOut)
		}

		var up admin.PlanUpdated
		out = ok(t, "plans", "update", "pro", "--no-rate", "--json")
		if err := json.Unmarshal([]byte(out), &up); err != nil || up.RateLimit != nil || up.MonthlyQuota != 2000 ||
			len(up.Changed) != 1 || up.Changed[0] != "rate_limit" || strings.Contains(out, "rate_limit\":{") {
			t.Fatalf("--no-rate --json: %v %+v\n%s", err, up, out)
		}
		has(t, "rate and outage", ok(t, "plans", "update", "pro", "--rate", "3", "--on-outage", "open"),
			"Updated plan pro (rate_limit, on_outage)", row("rate_limit", "3/s burst 6"), row("on_outage", "open"))
		has(t, "no change", ok(t, "plans", "update", "pro", "--monthly-quota", "2000"), "Nothing to change on plan pro.")
		if code, _, errOut := cli("plans", "update", "nope", "--monthly-quota", "1"); code != 1 || !strings.Contains(errOut, "no plan") {
			t.Fatalf("update a missing plan: %d %s", code, errOut)
		}
	})

	t.Run("owners", func(t *testing.T) {
		out := ok(t, "owners", "set", "acme", "--plan", "pro", "--metadata", `{"crm":"A-1"}`)
		has(t, "set", out, "Created owner acme, applied by 1/1", row("plan", "pro"), row("metadata", `{"crm":"A-1"}`))
		has(t, "show", ok(t, "owners", "show", "acme"), row("owner", "acme"), row("plan", "pro"), row("metadata", `{"crm":"A-1"}`))

		// Flags left out keep what the owner holds.
		has(t, "set metadata", ok(t, "owners", "set", "acme", "--metadata", `{"crm":"B-2"}`),
			"Updated owner acme", row("plan", "pro"), row("metadata", `{"crm":"B-2"}`))
		has(t, "set the same", ok(t, "owners", "set", "acme", "--plan", "pro"), "Nothing to change on owner acme.")
		var o keyledger.Owner
		out = ok(t, "owners", "set", "beta", "--plan", "basic", "--json")
		if err := json.Unmarshal([]byte(out), &o); err != nil || o.Name != "beta" || o.Plan != "basic" || o.Metadata != nil || o.Revision == 0 {
			t.Fatalf("set --json: %v %+v\n%s", err, o, out)
		}
		has(t, "no plan", ok(t, "owners", "set", "beta", "--plan", ""), row("plan", "-"))
		has(t, "no metadata", ok(t, "owners", "set", "acme", "--metadata", "null"), row("plan", "pro"), row("metadata", "-"))
		if err := json.Unmarshal([]byte(ok(t, "owners", "show", "acme", "--json")), &o); err != nil || o.Plan != "pro" || o.Metadata != nil {
			t.Fatalf("show --json: %v %+v", err, o)
		}
		if code, _, errOut := cli("owners", "set", "acme", "--plan", "gold"); code != 1 || !strings.Contains(errOut, `plan "gold" does not exist`) {
			t.Fatalf("an unknown plan: %d %s", code, errOut)
		}
		if code, _, errOut := cli("owners", "show", "nobody"); code != 1 || !strings.Contains(errOut, `no owner "nobody"`) {
			t.Fatalf("a missing owner: %d %s", code, errOut)
		}

		out = ok(t, "owners", "quota", "acme")
		month := time.Now().UTC().Format("2006-01")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || strings.Fields(lines[0])[5] != "RESETS_AT" || strings.Contains(out, "EXACT_USED") {
			t.Fatalf("quota:\n%s", out)
		}
		if f := strings.Fields(lines[1]); f[0] != "acme" || f[1] != "pro" || f[2] != month || f[3] != "0" || f[4] != "2000" ||
			f[5] != keyledger.MonthStart(time.Now()).AddDate(0, 1, 0).Format(time.RFC3339) {
			t.Fatalf("quota before any use:\n%s", out)
		}
		// Three valid verifications of an acme key count: the fleet has
		// drawn at least that much from the month's counter.
		var k struct{ Key string }
		if err := json.Unmarshal([]byte(ok(t, "keys", "create", "--name", "metered", "--owner", "acme", "--json")), &k); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			ok(t, "verify", k.Key)
		}
		var q khttp.OwnerQuota
		out = ok(t, "owners", "quota", "acme", "--json")
		if err := json.Unmarshal([]byte(out), &q); err != nil || q.Owner != "acme" || q.Plan != "pro" || q.Month != month ||
			q.Used < 3 || q.Limit != 2000 || q.ExactUsed != nil || !q.ResetsAt.Equal(keyledger.MonthStart(time.Now()).AddDate(0, 1, 0)) {
			t.Fatalf("quota --json: %v %+v\n%s", err, q, out)
		}
		if code, _, errOut := cli("owners", "quota", "nobody"); code != 1 || !strings.Contains(errOut, "no owner") {
			t.Fatalf("quota of a missing owner: %d %s", code, errOut)
		}
	})

	t.Run("credits", func(t *testing.T) {
		out := ok(t, "keys", "create", "--name", "credited", "--credits", "5", "--refill", "daily", "--refill-amount", "10")
		has(t, "create", out, row("credits", "5 (refill daily to 10)"))
		id := strings.Fields(strings.SplitN(out, "\n", 2)[0])[2]
		has(t, "show", ok(t, "keys", "show", id), row("credits", "5 (refill daily to 10)"))
		has(t, "refill amount defaults to the balance", ok(t, "keys", "create", "--name", "monthly", "--credits", "7", "--refill", "monthly"),
			row("credits", "7 (refill monthly to 7)"))

		var k admin.Created
		out = ok(t, "keys", "create", "--name", "two", "--credits", "2", "--json")
		if err := json.Unmarshal([]byte(out), &k); err != nil || k.Credits == nil || k.Credits.Remaining != 2 || k.Credits.Refill != nil {
			t.Fatalf("create --json: %v %+v\n%s", err, k.Credits, out)
		}
		ok(t, "verify", k.Secret)
		ok(t, "verify", k.Secret)
		if code, out, _ := cli("verify", k.Secret); code != 1 || !strings.Contains(out, "credits_exhausted") {
			t.Fatalf("verify with no credits left: %d %s", code, out)
		}
		// keys update sets a new balance, or removes it.
		has(t, "update", ok(t, "keys", "update", k.ID, "--credits", "1"), "Updated "+k.ID+" (credits)", row("credits", "1"))
		ok(t, "verify", k.Secret)
		out = ok(t, "keys", "update", k.ID, "--credits", "none")
		if !strings.Contains(out, "Updated "+k.ID+" (credits)") || strings.Contains(out, "credits ") {
			t.Fatalf("update --credits none:\n%s", out)
		}
		ok(t, "verify", k.Secret)
		if code, _, errOut := cli("keys", "create", "--name", "x", "--credits", fmt.Sprint(int64(keyledger.MaxQuota)+1)); code != 1 || !strings.Contains(errOut, "credits.remaining") {
			t.Fatalf("too many credits: %d %s", code, errOut)
		}
	})
}

// TestPlanOwnerCredits_badFlags: bad usage exits 2 with a message naming
// the mistake, before any request (the node URL reaches nothing).
func TestPlanOwnerCredits_badFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"plans"}, "plans needs a subcommand"},
		{[]string{"plans", "rename"}, `unknown plans subcommand "rename"`},
		{[]string{"plans", "create"}, "plans create needs --name"},
		{[]string{"plans", "create", "pro"}, "plans create takes flags only"},
		{[]string{"plans", "create", "--name", "x", "--on-outage", "maybe"}, `--on-outage must be closed or open, not "maybe"`},
		{[]string{"plans", "create", "--name", "x", "--burst", "5"}, "--burst needs --rate"},
		{[]string{"plans", "create", "--name", "x", "--rate", "0"}, "--rate must be a positive number"},
		{[]string{"plans", "create", "--name", "x", "--rate", "1", "--burst", "0"}, "--burst must be at least 1"},
		{[]string{"plans", "create", "--name", "x", "--monthly-quota", "-1"}, "--monthly-quota must be 0 (no quota) or more"},
		{[]string{"plans", "create", "--name", "x", "--monthly-quota", "lots"}, `invalid value "lots" for flag -monthly-quota`},
		{[]string{"plans", "list", "pro"}, "plans list takes flags only"},
		{[]string{"plans", "show"}, "plans show takes one plan name"},
		{[]string{"plans", "show", "a", "b"}, "plans show takes one plan name"},
		{[]string{"plans", "update", "--monthly-quota", "5"}, "plans update takes one plan name"},
		{[]string{"plans", "update", "pro"}, "plans update needs something to change"},
		{[]string{"plans", "update", "pro", "--no-rate", "--rate", "5"}, "--no-rate removes the rate limit"},
		{[]string{"plans", "update", "pro", "--burst", "5"}, "--burst needs --rate"},
		{[]string{"plans", "update", "pro", "--on-outage", "ajar"}, "--on-outage must be closed or open"},
		{[]string{"plans", "update", "pro", "--monthly-quota", "1", "--if-match", "latest"}, "invalid value \"latest\" for flag -if-match"},
		{[]string{"owners"}, "owners needs a subcommand"},
		{[]string{"owners", "delete", "acme"}, `unknown owners subcommand "delete"`},
		{[]string{"owners", "set"}, "owners set takes one owner"},
		{[]string{"owners", "set", "acme", "--metadata", "[1]"}, "--metadata must be a JSON object"},
		{[]string{"owners", "set", "acme", "--metadata", "{"}, "--metadata must be a JSON object"},
		{[]string{"owners", "show"}, "owners show takes one owner"},
		{[]string{"owners", "quota", "a", "b"}, "owners quota takes one owner"},
		{[]string{"keys", "create", "--name", "k", "--refill", "daily"}, "--refill and --refill-amount need --credits"},
		{[]string{"keys", "create", "--name", "k", "--credits", "-1"}, `--credits wants a balance of 0 or more, not "-1"`},
		{[]string{"keys", "create", "--name", "k", "--credits", "none"}, `--credits wants a balance of 0 or more, not "none"`},
		{[]string{"keys", "create", "--name", "k", "--credits", "5", "--refill", "weekly"}, `--refill must be daily or monthly, not "weekly"`},
		{[]string{"keys", "create", "--name", "k", "--credits", "5", "--refill-amount", "3"}, "--refill-amount needs --refill"},
		{[]string{"keys", "create", "--name", "k", "--credits", "0", "--refill", "daily"}, "--refill-amount must be at least 1"},
		{[]string{"keys", "update", "key_x", "--credits", "none", "--refill", "daily"}, "--credits none removes the credits"},
		{[]string{"keys", "update", "key_x", "--credits", "many"}, `--credits wants a balance of 0 or more, or none, not "many"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			args := tc.args
			if len(args) > 1 {
				args = append(args, "--url", "http://127.0.0.1:1", "--token", "t")
			}
			code := run(context.Background(), args, &out, &errb)
			if code != 2 || !strings.HasPrefix(errb.String(), "keyledger: usage: ") || !strings.Contains(errb.String(), tc.want) || out.Len() != 0 {
				t.Fatalf("exit %d, stdout %q, stderr %q; want 2 and %q", code, out.String(), errb.String(), tc.want)
			}
		})
	}
}

// TestOwnerQuota_exactUsed: with analytics the quota table shows the exact
// count beside the enforced one.
func TestOwnerQuota_exactUsed(t *testing.T) {
	var out bytes.Buffer
	raw := `{"owner":"acme","plan":"pro","month":"2026-12","used":48210,"limit":2000000,"resets_at":"2027-01-01T00:00:00Z","exact_used":48177}`
	if err := printOwnerQuota(&out, []byte(raw)); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "OWNER PLAN MONTH USED LIMIT RESETS_AT EXACT_USED" ||
		strings.Join(strings.Fields(lines[1]), " ") != "acme pro 2026-12 48210 2000000 2027-01-01T00:00:00Z 48177" {
		t.Fatalf("quota table:\n%s", out.String())
	}
}
