package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"time"

	"github.com/keyledger/keyledger/internal/cli"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	khttp "github.com/keyledger/keyledger/http"
)

// plansCmd runs `plans create|list|show|update`: the price plans of
// /v1/plans.
func plansCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageErr("plans needs a subcommand: create, list, show, update")
	}
	fs := flag.NewFlagSet("plans "+args[0], flag.ContinueOnError)
	c := addClientFlags(fs)
	switch args[0] {
	case "create":
		return plansCreate(ctx, fs, c, args[1:], stdout)
	case "update":
		return plansUpdate(ctx, fs, c, args[1:], stdout)
	case "list":
		pos, err := parseArgs(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 0 {
			return usageErr("plans list takes flags only")
		}
		var raw json.RawMessage
		if err := c.do(ctx, "GET", "/v1/plans", true, nil, &raw); err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, raw)
		}
		var list admin.PlanList
		if err := json.Unmarshal(raw, &list); err != nil {
			return err
		}
		rows := make([][]string, 0, len(list.Plans))
		for _, p := range list.Plans {
			rows = append(rows, []string{p.Name, fmtQuota(p.MonthlyQuota), fmtRate(p.RateLimit), outage(p.OnOutage),
				fmt.Sprint(p.Revision), fmtTime(&p.UpdatedAt)})
		}
		return cli.PrintTable(stdout, []string{"NAME", "MONTHLY_QUOTA", "RATE_LIMIT", "ON_OUTAGE", "REVISION", "UPDATED"}, rows)
	case "show":
		pos, err := parseArgs(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr("plans show takes one plan name")
		}
		var raw json.RawMessage
		if err := c.do(ctx, "GET", "/v1/plans/"+url.PathEscape(pos[0]), true, nil, &raw); err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, raw)
		}
		var p keyledger.PlanRecord
		if err := json.Unmarshal(raw, &p); err != nil {
			return err
		}
		return printPlan(stdout, &p)
	}
	return usageErr("unknown plans subcommand %q (create, list, show, update)", args[0])
}

// rateFlags are a plan's --rate and --burst.
type rateFlags struct {
	rate  float64
	burst int
}

func addRateFlags(fs *flag.FlagSet) *rateFlags {
	r := &rateFlags{}
	fs.Float64Var(&r.rate, "rate", 0, "requests per second shared by all of an owner's keys, across the fleet")
	fs.IntVar(&r.burst, "burst", 0, "burst of the rate (default: 2 x rate)")
	return r
}

// limit returns the rate limit the flags give (nil: neither was given).
func (r *rateFlags) limit(set map[string]bool) (*keyledger.RateLimit, error) {
	if !set["rate"] {
		if set["burst"] {
			return nil, usageErr("--burst needs --rate")
		}
		return nil, nil
	}
	if !(r.rate > 0) {
		return nil, usageErr("--rate must be a positive number of requests per second, not %g", r.rate)
	}
	b := r.burst
	if set["burst"] {
		if b < 1 {
			return nil, usageErr("--burst must be at least 1, not %d", b)
		}
	} else if b = int(2 * r.rate); b < 1 {
		b = 1
	}
	return &keyledger.RateLimit{PerSecond: r.rate, Burst: b}, nil
}

func checkOutage(v string) error {
	if v != keyledger.OutageClosed && v != keyledger.OutageOpen {
		return usageErr("--on-outage must be %s or %s, not %q", keyledger.OutageClosed, keyledger.OutageOpen, v)
	}
	return nil
}

func checkQuota(n int64) error {
	if n < 0 {
		return usageErr("--monthly-quota must be 0 (no quota) or more, not %d", n)
	}
	return nil
}

func flagsSet(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

func plansCreate(ctx context.Context, fs *flag.FlagSet, c *clientFlags, args []string, stdout io.Writer) error {
	name := fs.String("name", "", "name of the plan: lower-case letters, digits, - and _ (required)")
	monthly := fs.Int64("monthly-quota", 0, "live verifications all of an owner's keys may pass per calendar month, UTC (0: no quota)")
	rf := addRateFlags(fs)
	onOutage := fs.String("on-outage", keyledger.OutageClosed, "when the counters cannot be reached: closed (503) or open (let metered keys through, uncounted)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("plans create takes flags only (the name goes in --name)")
	}
	if *name == "" {
		return usageErr("plans create needs --name")
	}
	set := flagsSet(fs)
	if err := checkQuota(*monthly); err != nil {
		return err
	}
	if err := checkOutage(*onOutage); err != nil {
		return err
	}
	rl, err := rf.limit(set)
	if err != nil {
		return err
	}
	p := keyledger.Plan{Name: *name, MonthlyQuota: *monthly, RateLimit: rl}
	if set["on-outage"] {
		p.OnOutage = *onOutage
	}
	var raw json.RawMessage
	if err := c.do(ctx, "POST", "/v1/plans", true, p, &raw); err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	var v admin.PlanView
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Created plan %s, applied by %s.\n\n", v.Name, orDash(v.AppliedBy))
	return printPlan(stdout, &v.PlanRecord)
}

func plansUpdate(ctx context.Context, fs *flag.FlagSet, c *clientFlags, args []string, stdout io.Writer) error {
	monthly := fs.Int64("monthly-quota", 0, "new monthly quota (0: no quota)")
	rf := addRateFlags(fs)
	noRate := fs.Bool("no-rate", false, "remove the plan's rate limit")
	onOutage := fs.String("on-outage", "", "closed or open")
	ifMatch := fs.Uint64("if-match", 0, "only if the plan is still at this revision")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("plans update takes one plan name")
	}
	set := flagsSet(fs)
	patch := map[string]any{}
	if set["monthly-quota"] {
		if err := checkQuota(*monthly); err != nil {
			return err
		}
		patch["monthly_quota"] = *monthly
	}
	if *noRate && (set["rate"] || set["burst"]) {
		return usageErr("--no-rate removes the rate limit: give it without --rate and --burst")
	}
	rl, err := rf.limit(set)
	if err != nil {
		return err
	}
	switch {
	case rl != nil:
		patch["rate_limit"] = rl
	case *noRate:
		patch["rate_limit"] = nil
	}
	if set["on-outage"] {
		if err := checkOutage(*onOutage); err != nil {
			return err
		}
		patch["on_outage"] = *onOutage
	}
	if len(patch) == 0 {
		return usageErr("plans update needs something to change: --monthly-quota, --rate, --no-rate, --on-outage")
	}
	raw, err := c.patch(ctx, "/v1/plans/"+url.PathEscape(pos[0]), *ifMatch, patch)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	var u admin.PlanUpdated
	if err := json.Unmarshal(raw, &u); err != nil {
		return err
	}
	printChanged(stdout, "plan "+u.Name, u.Changed, u.AppliedBy)
	return printPlan(stdout, &u.PlanRecord)
}

func printPlan(w io.Writer, p *keyledger.PlanRecord) error {
	return printRows(w, [][]string{
		{"name", p.Name}, {"monthly_quota", fmtQuota(p.MonthlyQuota)}, {"rate_limit", fmtRate(p.RateLimit)},
		{"on_outage", outage(p.OnOutage)}, {"revision", fmt.Sprint(p.Revision)},
		{"updated_at", fmtTime(&p.UpdatedAt)}, {"updated_by", orDash(p.UpdatedBy)},
	})
}

func printRows(w io.Writer, rows [][]string) error {
	for _, r := range rows {
		if _, err := fmt.Fprintf(w, "%-14s %s\n", r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

func fmtQuota(n int64) string {
	if n == 0 {
		return "none"
	}
	return fmt.Sprint(n)
}

func fmtRate(r *keyledger.RateLimit) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%g/s burst %d", r.PerSecond, r.Burst)
}

// outage names a plan's on_outage, "" being the default.
func outage(v string) string {
	if v == "" {
		return keyledger.OutageClosed
	}
	return v
}

// ownersCmd runs `owners set|show|quota`: the owner records of /v1/owners.
func ownersCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageErr("owners needs a subcommand: set, show, quota")
	}
	fs := flag.NewFlagSet("owners "+args[0], flag.ContinueOnError)
	c := addClientFlags(fs)
	switch args[0] {
	case "set":
		return ownersSet(ctx, fs, c, args[1:], stdout)
	case "show", "quota":
		pos, err := parseArgs(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr("owners %s takes one owner", args[0])
		}
		path := "/v1/owners/" + url.PathEscape(pos[0])
		if args[0] == "quota" {
			path += "/quota"
		}
		var raw json.RawMessage
		if err := c.do(ctx, "GET", path, true, nil, &raw); err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, raw)
		}
		if args[0] == "quota" {
			return printOwnerQuota(stdout, raw)
		}
		var o keyledger.Owner
		if err := json.Unmarshal(raw, &o); err != nil {
			return err
		}
		return printOwner(stdout, &o)
	}
	return usageErr("unknown owners subcommand %q (set, show, quota)", args[0])
}

// ownersSet writes an owner's record. The API's PUT replaces the whole
// record, so the flags left out keep what the owner holds now: setting
// metadata never drops a plan by accident.
func ownersSet(ctx context.Context, fs *flag.FlagSet, c *clientFlags, args []string, stdout io.Writer) error {
	plan := fs.String("plan", "", `the owner's plan, which must exist ("": none, nothing metered; default: unchanged)`)
	meta := fs.String("metadata", "", `a JSON object about the owner, replacing its metadata ("null": none; default: unchanged)`)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("owners set takes one owner")
	}
	set := flagsSet(fs)
	var req admin.OwnerRequest
	req.Plan = *plan
	if set["metadata"] {
		m := bytes.TrimSpace([]byte(*meta))
		if !json.Valid(m) || (!bytes.HasPrefix(m, []byte("{")) && !bytes.Equal(m, []byte("null"))) {
			return usageErr(`--metadata must be a JSON object such as '{"crm":"A-1"}', or null`)
		}
		if !bytes.Equal(m, []byte("null")) {
			req.Metadata = m
		}
	}
	path := "/v1/owners/" + url.PathEscape(pos[0])
	var current *keyledger.Owner
	if !set["plan"] || !set["metadata"] {
		var o keyledger.Owner
		switch err := c.do(ctx, "GET", path, true, nil, &o); {
		case err == nil:
			current = &o
			if !set["plan"] {
				req.Plan = o.Plan
			}
			if !set["metadata"] {
				req.Metadata = o.Metadata
			}
		case !errors.Is(err, keyledger.ErrNotFound):
			return err
		}
	}
	var raw json.RawMessage
	if err := c.do(ctx, "PUT", path, true, req, &raw); err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	var v admin.OwnerView
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	switch {
	case current != nil && current.Revision == v.Revision:
		fmt.Fprintf(stdout, "Nothing to change on owner %s.\n\n", v.Name)
	case current != nil:
		fmt.Fprintf(stdout, "Updated owner %s, applied by %s.\n\n", v.Name, orDash(v.AppliedBy))
	default:
		fmt.Fprintf(stdout, "Created owner %s, applied by %s.\n\n", v.Name, orDash(v.AppliedBy))
	}
	return printOwner(stdout, &v.Owner)
}

func printOwner(w io.Writer, o *keyledger.Owner) error {
	meta := "-"
	if len(o.Metadata) > 0 {
		meta = string(o.Metadata)
	}
	return printRows(w, [][]string{
		{"owner", o.Name}, {"plan", orDash(o.Plan)}, {"metadata", meta}, {"revision", fmt.Sprint(o.Revision)},
		{"updated_at", fmtTime(&o.UpdatedAt)}, {"updated_by", orDash(o.UpdatedBy)},
	})
}

// printOwnerQuota prints GET /v1/owners/{owner}/quota as a table, with
// EXACT_USED when the node counts with analytics.
func printOwnerQuota(w io.Writer, raw []byte) error {
	var q khttp.OwnerQuota
	if err := json.Unmarshal(raw, &q); err != nil {
		return err
	}
	header := []string{"OWNER", "PLAN", "MONTH", "USED", "LIMIT", "RESETS_AT"}
	row := []string{q.Owner, orDash(q.Plan), q.Month, fmt.Sprint(q.Used), fmtQuota(q.Limit), q.ResetsAt.UTC().Format(time.RFC3339)}
	if q.ExactUsed != nil {
		header = append(header, "EXACT_USED")
		row = append(row, fmt.Sprint(*q.ExactUsed))
	}
	return cli.PrintTable(w, header, [][]string{row})
}

// creditsFlags are the --credits, --refill and --refill-amount of keys
// create and keys update.
type creditsFlags struct {
	credits string
	refill  string
	amount  int64
}

// addCreditsFlags adds the flags; none is the word that removes credits
// (keys update), "" for none.
func addCreditsFlags(fs *flag.FlagSet, none string) *creditsFlags {
	cf := &creditsFlags{}
	help := "a balance of verifications on the key: each valid one spends its cost, and at 0 the key is refused"
	if none != "" {
		help += fmt.Sprintf(" (%s removes the key's credits)", none)
	}
	fs.StringVar(&cf.credits, "credits", "", help)
	fs.StringVar(&cf.refill, "refill", "", "with --credits: the balance comes back daily or monthly (00:00 UTC)")
	fs.Int64Var(&cf.amount, "refill-amount", 0, "with --refill: the balance of each day or month (default: --credits)")
	return cf
}

// value returns the credits the flags give: set is false when none of
// them was given; nil credits (with set) remove them.
func (cf *creditsFlags) value(fs *flag.FlagSet, none string) (c *keyledger.Credits, set bool, err error) {
	given := flagsSet(fs)
	if !given["credits"] {
		if given["refill"] || given["refill-amount"] {
			return nil, false, usageErr("--refill and --refill-amount need --credits")
		}
		return nil, false, nil
	}
	if none != "" && cf.credits == none {
		if given["refill"] || given["refill-amount"] {
			return nil, false, usageErr("--credits %s removes the credits: give it without --refill", none)
		}
		return nil, true, nil
	}
	n, perr := strconv.ParseInt(cf.credits, 10, 64)
	if perr != nil || n < 0 {
		if none != "" {
			return nil, false, usageErr("--credits wants a balance of 0 or more, or %s, not %q", none, cf.credits)
		}
		return nil, false, usageErr("--credits wants a balance of 0 or more, not %q", cf.credits)
	}
	c = &keyledger.Credits{Remaining: n}
	if !given["refill"] {
		if given["refill-amount"] {
			return nil, false, usageErr("--refill-amount needs --refill daily or monthly")
		}
		return c, true, nil
	}
	if cf.refill != keyledger.RefillDaily && cf.refill != keyledger.RefillMonthly {
		return nil, false, usageErr("--refill must be %s or %s, not %q", keyledger.RefillDaily, keyledger.RefillMonthly, cf.refill)
	}
	amount := n
	if given["refill-amount"] {
		amount = cf.amount
	}
	if amount < 1 {
		return nil, false, usageErr("--refill-amount must be at least 1, not %d", amount)
	}
	c.Refill = &keyledger.Refill{Interval: cf.refill, Amount: amount}
	return c, true, nil
}

func fmtCredits(c *keyledger.Credits) string {
	s := fmt.Sprint(c.Remaining)
	if c.Refill != nil {
		s += fmt.Sprintf(" (refill %s to %d)", c.Refill.Interval, c.Refill.Amount)
	}
	return s
}
