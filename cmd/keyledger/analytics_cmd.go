package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/keyledger/keyledger/internal/cli"

	"github.com/keyledger/keyledger/analytics"
)

// analyticsCmd runs usage, quota, audit or alerts: each turns its flags into
// the query parameters of the endpoint of the same name and prints a table
// (or the JSON with --json).
func analyticsCmd(ctx context.Context, name string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	c := addClientFlags(fs)
	var params []string
	str := func(flagName, param, help string) {
		fs.String(flagName, "", help)
		params = append(params, flagName+"="+param)
	}
	switch name {
	case "usage":
		str("key", "key_id", "key id")
		str("owner", "owner", "owner (all of its keys)")
		str("interval", "interval", "minute, hour or day (default hour)")
	case "quota":
		str("owner", "owner", "owner (required)")
		str("month", "month", "YYYY-MM (default: this month)")
	case "audit":
		str("key", "key_id", "key id")
		str("actor", "actor", "who caused the events")
		str("type", "type", "KeyCreated, KeyRolled, KeyRevoked, KeyUpdated, KeyDisabled or KeyEnabled")
		str("limit", "limit", "most events returned (default 1000)")
	case "alerts":
		str("rule", "rule", "rule name: "+strings.Join(analytics.Rules(), ", "))
		str("key", "key_id", "key id")
		str("limit", "limit", "most alerts returned (default 1000)")
	}
	if name != "quota" {
		str("from", "from", "start, RFC 3339 (or a duration ago, e.g. 24h)")
		str("to", "to", "end, RFC 3339 (or a duration ago; default now)")
	}
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	q := url.Values{}
	for _, p := range params {
		flagName, param, _ := strings.Cut(p, "=")
		v := fs.Lookup(flagName).Value.String()
		if v == "" {
			continue
		}
		if flagName == "from" || flagName == "to" {
			if d, err := time.ParseDuration(v); err == nil {
				v = time.Now().Add(-d).UTC().Format(time.RFC3339)
			}
		}
		if name == "quota" && flagName == "month" && v == "" {
			continue
		}
		q.Set(param, v)
	}
	if name == "quota" && q.Get("month") == "" {
		q.Set("month", time.Now().UTC().Format("2006-01"))
	}
	var raw json.RawMessage
	if err := c.do(ctx, "GET", "/v1/"+name+"?"+q.Encode(), true, nil, &raw); err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	switch name {
	case "usage":
		var r analytics.UsageResult
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		rows := make([][]string, 0, len(r.Points))
		for _, p := range r.Points {
			rows = append(rows, []string{p.Time.UTC().Format(time.RFC3339), p.Outcome, fmt.Sprint(p.Count)})
		}
		return cli.PrintTable(stdout, []string{"TIME", "OUTCOME", "COUNT"}, rows)
	case "quota":
		var r analytics.Quota
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		return cli.PrintTable(stdout, []string{"OWNER", "MONTH", "USED"}, [][]string{{r.Owner, r.Month, fmt.Sprint(r.Used)}})
	case "audit":
		var r analytics.AuditResult
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		rows := make([][]string, 0, len(r.Events))
		for _, e := range r.Events {
			rows = append(rows, []string{e.At.UTC().Format(time.RFC3339Nano), e.Type, e.KeyID, e.Actor, orDash(e.Owner), orDash(e.Reason)})
		}
		return cli.PrintTable(stdout, []string{"AT", "TYPE", "KEY", "ACTOR", "OWNER", "REASON"}, rows)
	default:
		var r analytics.AlertResult
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		rows := make([][]string, 0, len(r.Alerts))
		for _, a := range r.Alerts {
			rows = append(rows, []string{a.At.UTC().Format(time.RFC3339), a.Rule, orDash(a.KeyID), orDash(a.Owner), orDash(a.IP),
				fmt.Sprintf("%g", a.Observed), fmt.Sprintf("%g", a.Baseline), a.Detail})
		}
		return cli.PrintTable(stdout, []string{"AT", "RULE", "KEY", "OWNER", "IP", "OBSERVED", "BASELINE", "DETAIL"}, rows)
	}
}
