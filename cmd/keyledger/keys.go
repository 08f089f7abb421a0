package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/keyledger/keyledger/internal/cli"

	khttp "github.com/keyledger/keyledger/http"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
)

func keysCmd(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageErr("keys needs a subcommand: create, list, show, update, disable, enable, revoke, roll, events")
	}
	fs := flag.NewFlagSet("keys "+args[0], flag.ContinueOnError)
	c := addClientFlags(fs)
	switch args[0] {
	case "create":
		return keysCreate(ctx, fs, c, args[1:], stdout)
	case "list":
		return keysList(ctx, fs, c, args[1:], stdout)
	case "roll":
		return keysRoll(ctx, fs, c, args[1:], stdout)
	case "update":
		return keysUpdate(ctx, fs, c, args[1:], stdout)
	case "show", "revoke", "events", "disable", "enable":
		var reason *string
		if args[0] == "revoke" || args[0] == "disable" || args[0] == "enable" {
			reason = fs.String("reason", "", "why (kept in the ledger)")
		}
		pos, err := parseArgs(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr("keys %s takes one key id", args[0])
		}
		id := url.PathEscape(pos[0])
		var raw json.RawMessage
		switch args[0] {
		case "show":
			err = c.do(ctx, "GET", "/v1/keys/"+id, true, nil, &raw)
		case "revoke", "disable", "enable":
			err = c.do(ctx, "POST", "/v1/keys/"+id+"/"+args[0], true, map[string]string{"reason": *reason}, &raw)
		case "events":
			err = c.do(ctx, "GET", "/v1/keys/"+id+"/events", true, nil, &raw)
		}
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(stdout, raw)
		}
		if args[0] == "events" {
			return printEvents(stdout, raw)
		}
		var k admin.KeyView
		if err := json.Unmarshal(raw, &k); err != nil {
			return err
		}
		switch args[0] {
		case "revoke":
			fmt.Fprintf(stdout, "Revoked %s. Every node refuses it from now on; this cannot be undone.\n\n", k.ID)
		case "disable":
			fmt.Fprintf(stdout, "Disabled %s. Every node refuses it until `keyledger keys enable %s`.\n\n", k.ID, k.ID)
		case "enable":
			fmt.Fprintf(stdout, "Enabled %s.\n\n", k.ID)
		}
		if args[0] == "show" && k.Uses30d != nil {
			defer fmt.Fprintf(stdout, "%-14s %s\n%-14s %d\n", "last_used_at", fmtTime(k.LastUsedAt), "uses_30d", *k.Uses30d)
		}
		return printKey(stdout, &k)
	}
	return usageErr("unknown keys subcommand %q", args[0])
}

func keysRoll(ctx context.Context, fs *flag.FlagSet, c *clientFlags, args []string, stdout io.Writer) error {
	grace := fs.Duration("grace", 24*time.Hour, "how long the old key keeps working (never past its own expiry); 0s revokes it now")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("keys roll takes one key id")
	}
	var raw json.RawMessage
	if err := c.do(ctx, "POST", "/v1/keys/"+url.PathEscape(pos[0])+"/roll", true, map[string]string{"expire_old_in": grace.String()}, &raw); err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	var r admin.Rolled
	if err := json.Unmarshal(raw, &r); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Rolled %s to %s\n\n    %s\n\nStore this key now: it will not be shown again.\n", r.Old.ID, r.ID, r.Secret)
	if r.Old.Status == keyledger.StatusRevoked {
		fmt.Fprintf(stdout, "The old key is revoked.\n\n")
	} else {
		fmt.Fprintf(stdout, "The old key keeps working until %s.\n\n", fmtTime(r.Old.ExpiresAt))
	}
	return printKey(stdout, &r.KeyView)
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func keysUpdate(ctx context.Context, fs *flag.FlagSet, c *clientFlags, args []string, stdout io.Writer) error {
	var name, perms, expires, reason string
	var ips, meta stringList
	fs.Func("name", "new name", func(v string) error { name = v; return nil })
	fs.Func("permissions", "comma-separated permissions, replacing the key's", func(v string) error { perms = v; return nil })
	fs.Func("expires", `new expiry: RFC 3339, a duration from now, or "never"`, func(v string) error { expires = v; return nil })
	fs.Var(&ips, "allow-ip", `allowed source address or CIDR (repeatable; "none" clears the list)`)
	fs.Var(&meta, "meta", "metadata member key=value (repeatable; key= removes it)")
	fs.StringVar(&reason, "reason", "", "why (kept in the ledger)")
	ifMatch := fs.Uint64("if-match", 0, "only if the key is still at this revision")
	cf := addCreditsFlags(fs, "none")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("keys update takes one key id")
	}
	credits, creditsSet, err := cf.value(fs, "none")
	if err != nil {
		return err
	}
	patch := map[string]any{}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["name"] {
		patch["name"] = name
	}
	if set["permissions"] {
		patch["permissions"] = strings.Split(perms, ",")
	}
	if set["expires"] {
		switch expires {
		case "never":
			patch["expires_at"] = nil
		default:
			t, err := time.Parse(time.RFC3339, expires)
			if err != nil {
				d, derr := time.ParseDuration(expires)
				if derr != nil {
					return usageErr("--expires wants an RFC 3339 time, a duration or never, not %q", expires)
				}
				t = time.Now().Add(d)
			}
			patch["expires_at"] = t.UTC().Format(time.RFC3339Nano)
		}
	}
	if len(ips) == 1 && ips[0] == "none" {
		patch["allowed_ips"] = nil
	} else if len(ips) > 0 {
		patch["allowed_ips"] = []string(ips)
	}
	if len(meta) > 0 {
		m := map[string]any{}
		for _, kv := range meta {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return usageErr("--meta wants key=value, not %q", kv)
			}
			if v == "" {
				m[k] = nil
			} else {
				m[k] = v
			}
		}
		patch["metadata"] = m
	}
	if creditsSet {
		patch["credits"] = credits
	}
	if len(patch) == 0 {
		return usageErr("keys update needs something to change: --name, --permissions, --expires, --allow-ip, --meta, --credits")
	}
	if reason != "" {
		patch["reason"] = reason
	}
	raw, err := c.patch(ctx, "/v1/keys/"+url.PathEscape(pos[0]), *ifMatch, patch)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	var u admin.Updated
	if err := json.Unmarshal(raw, &u); err != nil {
		return err
	}
	printChanged(stdout, u.ID, u.Changed, u.AppliedBy)
	return printKey(stdout, &u.KeyView)
}

// patch sends a JSON merge patch, with If-Match when ifMatch is set.
func (c *clientFlags) patch(ctx context.Context, path string, ifMatch uint64, patch map[string]any) (json.RawMessage, error) {
	var hdr map[string]string
	if ifMatch != 0 {
		hdr = map[string]string{"If-Match": fmt.Sprintf("%q", fmt.Sprint(ifMatch))}
	}
	var raw json.RawMessage
	err := c.doWith(ctx, "PATCH", path, hdr, patch, &raw)
	return raw, err
}

// printChanged says what a patch of what changed (nothing, or the fields).
func printChanged(w io.Writer, what string, changed []string, appliedBy string) {
	if len(changed) == 0 {
		fmt.Fprintf(w, "Nothing to change on %s.\n\n", what)
		return
	}
	fmt.Fprintf(w, "Updated %s (%s), applied by %s.\n\n", what, strings.Join(changed, ", "), orDash(appliedBy))
}

func keysCreate(ctx context.Context, fs *flag.FlagSet, c *clientFlags, args []string, stdout io.Writer) error {
	name := fs.String("name", "", "name of the key (required)")
	env := fs.String("environment", "live", "live or test")
	fs.StringVar(env, "env", "live", "shorthand for --environment")
	perms := fs.String("permissions", "", "comma-separated permissions (default: all)")
	owner := fs.String("owner", "", "owner of the key (customer, team, service)")
	expires := fs.String("expires", "", "expiry: RFC 3339 time or a duration from now such as 720h")
	rps := fs.Float64("rate", 0, "rate limit, requests per second (default: none for live, the node's for test)")
	burst := fs.Int("burst", 0, "rate-limit burst (default: 2 x rate)")
	cf := addCreditsFlags(fs, "")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("keys create takes flags only")
	}
	req := map[string]any{"name": *name, "environment": *env, "owner": *owner}
	if credits, set, err := cf.value(fs, ""); err != nil {
		return err
	} else if set {
		req["credits"] = credits
	}
	if *perms != "" {
		req["permissions"] = strings.Split(*perms, ",")
	}
	if *expires != "" {
		t, err := time.Parse(time.RFC3339, *expires)
		if err != nil {
			d, derr := time.ParseDuration(*expires)
			if derr != nil {
				return usageErr("--expires wants an RFC 3339 time or a duration, not %q", *expires)
			}
			t = time.Now().Add(d)
		}
		req["expires_at"] = t.UTC().Format(time.RFC3339Nano)
	}
	if *rps > 0 {
		b := *burst
		if b <= 0 {
			b = int(2 * *rps)
			if b < 1 {
				b = 1
			}
		}
		req["rate_limit"] = keyledger.RateLimit{PerSecond: *rps, Burst: b}
	}
	var raw json.RawMessage
	if err := c.do(ctx, "POST", "/v1/keys", true, req, &raw); err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	var k admin.Created
	if err := json.Unmarshal(raw, &k); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Created key %s\n\n    %s\n\nStore this key now: it will not be shown again.\n\n", k.ID, k.Secret)
	return printKey(stdout, &k.KeyView)
}

func printKey(w io.Writer, k *admin.KeyView) error {
	rows := [][]string{
		{"id", k.ID}, {"name", k.Name}, {"environment", k.Environment.String()}, {"status", string(k.Status)},
		{"owner", orDash(k.Owner)}, {"permissions", strings.Join(k.Permissions, ",")}, {"hint", "…" + k.Hint},
		{"expires_at", fmtTime(k.ExpiresAt)}, {"created_at", fmtTime(&k.CreatedAt)}, {"created_by", k.CreatedBy},
	}
	if k.RateLimit != nil {
		rows = append(rows, []string{"rate_limit", fmt.Sprintf("%g/s burst %d", k.RateLimit.PerSecond, k.RateLimit.Burst)})
	}
	if k.Credits != nil {
		rows = append(rows, []string{"credits", fmtCredits(k.Credits)})
	}
	if k.RevokedAt != nil {
		rows = append(rows, []string{"revoked_at", fmtTime(k.RevokedAt)}, []string{"revoked_by", k.RevokedBy},
			[]string{"revoke_reason", orDash(k.RevokeReason)})
	}
	if k.Disabled {
		rows = append(rows, []string{"disabled_at", fmtTime(k.DisabledAt)}, []string{"disabled_by", k.DisabledBy})
	}
	if len(k.AllowedIPs) > 0 {
		rows = append(rows, []string{"allowed_ips", strings.Join(k.AllowedIPs, ",")})
	}
	if len(k.Metadata) > 0 {
		rows = append(rows, []string{"metadata", string(k.Metadata)})
	}
	if k.AdminScope != nil {
		rows = append(rows, []string{"admin_scope", "owner " + k.AdminScope.Owner})
	}
	rows = append(rows, []string{"revision", fmt.Sprint(k.Revision)})
	for _, r := range rows {
		if _, err := fmt.Fprintf(w, "%-14s %s\n", r[0], r[1]); err != nil {
			return err
		}
	}
	return nil
}

func keysList(ctx context.Context, fs *flag.FlagSet, c *clientFlags, args []string, stdout io.Writer) error {
	owner := fs.String("owner", "", "only keys of this owner")
	env := fs.String("environment", "", "only live or test keys")
	status := fs.String("status", "", "only active, revoked, expired or disabled keys")
	prefix := fs.String("name-prefix", "", "only keys whose name starts with this")
	hint := fs.String("hint", "", "only the key whose secret ends with these 4 characters")
	limit := fs.Int("limit", 100, "keys per page (at most 1000)")
	cursor := fs.String("cursor", "", "the page after this cursor (printed under a page)")
	all := fs.Bool("all", false, "every matching key, page after page")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"owner": *owner, "environment": *env, "status": *status, "name_prefix": *prefix, "hint": *hint} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", fmt.Sprint(*limit))
	var keys []admin.KeyView
	next := *cursor
	for {
		if next != "" {
			q.Set("cursor", next)
		}
		var raw json.RawMessage
		if err := c.do(ctx, "GET", "/v1/keys?"+q.Encode(), true, nil, &raw); err != nil {
			return err
		}
		if c.json && !*all {
			return printJSON(stdout, raw)
		}
		var page admin.KeyPage
		if err := json.Unmarshal(raw, &page); err != nil {
			return err
		}
		keys = append(keys, page.Keys...)
		next = page.NextCursor
		if !*all || next == "" {
			break
		}
	}
	if c.json {
		b, err := json.Marshal(admin.KeyPage{Keys: keys})
		if err != nil {
			return err
		}
		return printJSON(stdout, b)
	}
	rows := make([][]string, 0, len(keys))
	for _, k := range keys {
		rows = append(rows, []string{k.ID, k.Name, k.Environment.String(), string(k.Status), orDash(k.Owner),
			strings.Join(k.Permissions, ","), "…" + k.Hint, fmtTime(k.ExpiresAt), fmtTime(&k.CreatedAt)})
	}
	if err := cli.PrintTable(stdout, []string{"ID", "NAME", "ENV", "STATUS", "OWNER", "PERMISSIONS", "HINT", "EXPIRES", "CREATED"}, rows); err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(stdout, "\nMore keys: keyledger keys list --cursor %s (or --all)\n", next)
	}
	return nil
}

func printEvents(w io.Writer, raw []byte) error {
	var out struct {
		Events []khttp.HistoryEntry `json:"events"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return err
	}
	rows := make([][]string, 0, len(out.Events))
	for _, e := range out.Events {
		var ev struct {
			Type   string    `json:"type"`
			At     time.Time `json:"at"`
			Actor  string    `json:"actor"`
			Reason string    `json:"reason"`
			ID     string    `json:"event_id"`
		}
		if err := json.Unmarshal(e.Event, &ev); err != nil {
			return err
		}
		rows = append(rows, []string{fmt.Sprint(e.Seq), ev.At.UTC().Format(time.RFC3339Nano), ev.Type, ev.Actor, orDash(ev.Reason), ev.ID})
	}
	return cli.PrintTable(w, []string{"SEQ", "AT", "TYPE", "ACTOR", "REASON", "EVENT_ID"}, rows)
}

func verifyCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	c := addClientFlags(fs)
	perm := fs.String("permission", "", "permission the request needs")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("verify takes one key")
	}
	var raw json.RawMessage
	err = c.do(ctx, "POST", "/v1/verify", false, map[string]string{"key": pos[0], "permission": *perm}, &raw)
	if err != nil {
		var e *keyledger.Error
		if c.json && errors.As(err, &e) {
			b, _ := json.Marshal(khttp.ErrorBody(e))
			printJSON(stdout, b)
			return errRefused
		}
		if errors.As(err, &e) && e.Code != keyledger.Unavailable && e.Code != keyledger.Internal {
			fmt.Fprintf(stdout, "refused: %s\n", keyledger.Describe(err))
			return errRefused
		}
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	var v struct {
		KeyID       string     `json:"key_id"`
		Environment string     `json:"environment"`
		Owner       string     `json:"owner"`
		Permissions []string   `json:"permissions"`
		ExpiresAt   *time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "valid: key %s (%s, owner %s, permissions %s, expires %s)\n",
		v.KeyID, v.Environment, orDash(v.Owner), strings.Join(v.Permissions, ","), fmtTime(v.ExpiresAt))
	return nil
}

func nodesCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("nodes", flag.ContinueOnError)
	c := addClientFlags(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.do(ctx, "GET", "/v1/nodes", true, nil, &raw); err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	var out struct {
		Nodes []admin.NodeView `json:"nodes"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return err
	}
	rows := make([][]string, 0, len(out.Nodes))
	for _, n := range out.Nodes {
		rows = append(rows, []string{n.Name, n.Role, n.Environment.String(), fmt.Sprint(n.LastSeq), fmt.Sprint(n.Lag),
			fmt.Sprint(n.CaughtUp), fmt.Sprint(n.Fresh), fmt.Sprint(n.Keys), fmt.Sprintf("%dms", n.AgeMS)})
	}
	return cli.PrintTable(stdout, []string{"NODE", "ROLE", "ENV", "LAST_SEQ", "LAG", "CAUGHT_UP", "FRESH", "KEYS", "SEEN"}, rows)
}
