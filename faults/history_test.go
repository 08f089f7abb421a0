package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// op is one request of the workload and what it got back.
type op struct {
	kind       string // create, revoke, verify
	node       string
	key        string // key id
	secret     string
	start, end time.Time
	code       int
	appliedBy  string
	refusing   []string
	unproven   []string
	answer     string // a failed write's body, clipped
}

// acked reports whether a write was acknowledged.
func (o *op) acked() bool {
	return o.kind == "create" && o.code == 201 || o.kind == "revoke" && o.code == 200
}

// failed reports whether the request got no usable answer: no response,
// or a 5xx (the node refused to decide).
func (o *op) failed() bool { return o.code == 0 || o.code >= 500 }

// downtime is a span in which the harness had a node killed or paused.
type downtime struct {
	node       string
	start, end time.Time // end: when the harness restarted or resumed it
	back       time.Time // first answer the node gave after end
}

// history records every operation of a run, and the faults injected.
type history struct {
	mu    sync.Mutex
	ops   []*op
	downs []*downtime
	// The keys the writers created (acknowledged), by id, for the
	// verifiers to pick from, and those whose revoke was acknowledged.
	keys    []*op
	revoked map[string]*op
}

func newHistory() *history { return &history{revoked: map[string]*op{}} }

// count returns the acknowledged creates so far.
func (h *history) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.keys)
}

func (h *history) add(o *op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, o)
	switch {
	case o.kind == "create" && o.acked():
		h.keys = append(h.keys, o)
	case o.kind == "revoke" && o.acked():
		h.revoked[o.key] = o
	}
}

// down records that the harness stopped node at start; up, that it
// started it again.
func (h *history) down(node string) *downtime {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := &downtime{node: node, start: time.Now()}
	h.downs = append(h.downs, d)
	return d
}

func (h *history) up(d *downtime) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d.end = time.Now()
}

// pick returns a key for a verifier: half the time one of the revoked,
// the rest any acknowledged one.
func (h *history) pick(r *rand.Rand) *op {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.keys) == 0 {
		return nil
	}
	if len(h.revoked) > 0 && r.IntN(2) == 0 {
		// The most recently created keys are the most recently revoked.
		for range 4 {
			k := h.keys[len(h.keys)-1-r.IntN(min(len(h.keys), 64))]
			if h.revoked[k.key] != nil {
				return k
			}
		}
	}
	return h.keys[r.IntN(len(h.keys))]
}

// workload runs writers (one per node: creates, and revokes of half of
// what it created) and verifiers (one per node) against the cluster until
// ctx ends. Nodes the harness stopped are skipped, not hammered.
func workload(ctx context.Context, c *cluster, h *history, owner string) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i, p := range c.nodes {
		wg.Add(2)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 1))
			var mine []string
			for n := 0; ctx.Err() == nil; n++ {
				if !p.alive() {
					pace(ctx, 20*time.Millisecond)
					continue
				}
				if len(mine) > 0 && r.IntN(2) == 0 {
					id := mine[len(mine)-1]
					mine = mine[:len(mine)-1]
					o := c.write(p, "revoke", id, "/v1/keys/"+id+"/revoke", `{"reason":"faults"}`)
					h.add(o)
					if o.failed() {
						pace(ctx, 20*time.Millisecond) // a client backs off
					}
					continue
				}
				o := c.write(p, "create", "", "/v1/keys",
					fmt.Sprintf(`{"name":"%s-%s-%d","owner":%q,"environment":"live"}`, owner, p.name, n, owner))
				h.add(o)
				if o.acked() {
					mine = append(mine, o.key)
				}
				if o.failed() {
					pace(ctx, 20*time.Millisecond) // a client backs off
				}
			}
		}()
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 2))
			for ctx.Err() == nil {
				k := h.pick(r)
				if k == nil || !p.alive() {
					pace(ctx, 10*time.Millisecond)
					continue
				}
				o := &op{kind: "verify", node: p.name, key: k.key, start: time.Now()}
				o.code, _ = c.do("GET", p, "/v1/authz", k.secret, "")
				o.end = time.Now()
				h.add(o)
				pace(ctx, 2*time.Millisecond)
			}
		}()
	}
	return &wg
}

// pace waits d or until ctx ends: the workload's rate, not a
// synchronization.
func pace(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// write sends a create or a revoke and records its answer.
func (c *cluster) write(p *proc, kind, id, path, body string) *op {
	o := &op{kind: kind, node: p.name, key: id, start: time.Now()}
	code, b := c.do("POST", p, path, c.token, body)
	o.end, o.code = time.Now(), code
	if o.failed() {
		o.answer = tail(string(b), 160)
	}
	var r struct {
		ID        string   `json:"id"`
		Key       string   `json:"key"`
		AppliedBy string   `json:"applied_by"`
		Refusing  []string `json:"refusing_nodes"`
		Unproven  []string `json:"unproven_nodes"`
	}
	if json.Unmarshal(b, &r) == nil {
		if kind == "create" {
			o.key, o.secret = r.ID, r.Key
		}
		o.appliedBy, o.refusing, o.unproven = r.AppliedBy, r.Refusing, r.Unproven
	}
	return o
}

// report is what a run's check found.
type report struct {
	Scenario       string
	Creates        int // acknowledged
	Revokes        int // acknowledged
	Verifications  int
	Lost           int // acknowledged creates missing or wrong at the end
	Duplicates     int // keys in the ledger more than once
	Wrong          int // answers that break a promise
	Unproven       int // acknowledged writes that named unproven nodes
	WorstVerify    time.Duration
	WorstWrite     time.Duration
	WorstRecovery  time.Duration
	FailedWrites   int // by nodes the harness had up
	failures       map[string]int
	fatal          string
	Filled         int // events nodes read from the leader past a stalled consumer
	SlowestWrite   time.Duration
	problems       []string
	recoveryByNode map[string]time.Duration
}

func (r *report) problem(format string, args ...any) {
	if len(r.problems) < 20 {
		r.problems = append(r.problems, fmt.Sprintf(format, args...))
	}
}

func (r *report) String() string {
	return fmt.Sprintf("%-18s acked creates %5d, revokes %5d, verifications %6d | lost %d, duplicates %d, wrong answers %d, unproven %d | worst unavailability of a node that was up: verify %.2f s, write %.2f s (%d failed writes; slowest acked write %.2f s) | stopped node back in %.2f s | filled %d",
		r.Scenario, r.Creates, r.Revokes, r.Verifications, r.Lost, r.Duplicates, r.Wrong, r.Unproven,
		r.WorstVerify.Seconds(), r.WorstWrite.Seconds(), r.FailedWrites, r.SlowestWrite.Seconds(), r.WorstRecovery.Seconds(), r.Filled)
}

// check verifies the history against the promises, then asks every node,
// once all are up again, about every key the run created.
func (h *history) check(t *testing.T, c *cluster, scenario, owner string) *report {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	r := &report{Scenario: scenario, recoveryByNode: map[string]time.Duration{}}
	sort.Slice(h.ops, func(i, j int) bool { return h.ops[i].start.Before(h.ops[j].start) })
	created := map[string]*op{}
	for _, o := range h.ops {
		if o.kind == "create" && o.acked() {
			created[o.key] = o
		}
	}
	revokeStart := map[string]time.Time{}
	for _, o := range h.ops {
		if o.kind == "revoke" {
			if t0, ok := revokeStart[o.key]; !ok || o.start.Before(t0) {
				revokeStart[o.key] = o.start
			}
		}
	}
	for _, o := range h.ops {
		switch {
		case o.kind == "create" && o.acked():
			r.Creates++
		case o.kind == "revoke" && o.acked():
			r.Revokes++
		}
		if o.acked() {
			r.SlowestWrite = max(r.SlowestWrite, o.end.Sub(o.start))
		}
		if o.acked() && len(o.unproven) > 0 {
			r.Unproven++
		}
		if o.kind != "verify" {
			continue
		}
		r.Verifications++
		// An acknowledged revoke is refused by every node it did not
		// name as unproven, from the moment it returned.
		if rv := h.revoked[o.key]; rv != nil && o.start.After(rv.end) && o.code == 200 && !contains(rv.unproven, o.node) {
			r.Wrong++
			r.problem("%s accepted %s %v after its revoke returned (%s)", o.node, o.key, o.start.Sub(rv.end).Round(time.Millisecond), rv.appliedBy)
		}
		// An acknowledged create works on every node it did not name as
		// unproven, from the moment it returned until a revoke began.
		if cr := created[o.key]; cr != nil && o.code == 401 && o.start.After(cr.end) && !contains(cr.unproven, o.node) {
			if rs, ok := revokeStart[o.key]; !ok || o.end.Before(rs) {
				r.Wrong++
				r.problem("%s refused %s (401) %v after its create returned (%s)", o.node, o.key, o.start.Sub(cr.end).Round(time.Millisecond), cr.appliedBy)
			}
		}
	}
	h.availability(r)

	// Heal, then ask every node about every key.
	for _, p := range c.nodes {
		c.waitReady(p, 90*time.Second)
	}
	var wg sync.WaitGroup
	parts := make([]*report, len(c.nodes))
	for i, p := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[i] = h.checkNode(c, p, owner, created, revokeStart)
		}()
	}
	wg.Wait()
	for _, part := range parts {
		if part.fatal != "" {
			t.Fatal(part.fatal)
		}
		r.Lost += part.Lost
		r.Duplicates += part.Duplicates
		r.Wrong += part.Wrong
		for _, p := range part.problems {
			r.problem("%s", p)
		}
	}
	return r
}

// checkNode asks one node, at the end of a run, about every key the run
// created: listed once, with the right status, and answering the
// verification it should. It runs beside the other nodes' checks.
func (h *history) checkNode(c *cluster, p *proc, owner string, created map[string]*op, revokeStart map[string]time.Time) *report {
	r := &report{}
	type listed struct{ ID, Name, Status string }
	var keys []listed
	for cursor := ""; ; {
		path := "/v1/keys?limit=1000&owner=" + url.QueryEscape(owner)
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		code, b := c.do("GET", p, path, c.token, "")
		var page struct {
			Keys       []listed
			NextCursor string `json:"next_cursor"`
		}
		if code != 200 || json.Unmarshal(b, &page) != nil {
			r.fatal = fmt.Sprintf("list on %s: %d %s", p.name, code, tail(string(b), 300))
			return r
		}
		keys = append(keys, page.Keys...)
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	names := map[string]int{}
	byID := map[string]string{}
	for _, k := range keys {
		names[k.Name]++
		byID[k.ID] = k.Status
	}
	for name, n := range names {
		if n > 1 {
			r.Duplicates += n - 1
			r.problem("%s lists %d keys named %s", p.name, n, name)
		}
	}
	for id, cr := range created {
		st, ok := byID[id]
		want := "active"
		if h.revoked[id] != nil {
			want = "revoked"
		}
		_, revoking := revokeStart[id]
		switch {
		case !ok:
			r.Lost++
			r.problem("%s lost acknowledged key %s", p.name, id)
		case st != want && !(want == "active" && revoking):
			r.Lost++
			r.problem("%s lists %s as %s, want %s", p.name, id, st, want)
		}
		code, _ := c.do("GET", p, "/v1/authz", cr.secret, "")
		switch {
		case want == "revoked" && code != 401, want == "active" && !revoking && code != 200:
			r.Wrong++
			r.problem("%s answers %d for %s (%s) after the run", p.name, code, id, want)
		}
	}
	return r
}

// availability measures, per node, the longest span in which every
// request failed while the harness had the node up, and how long each
// stopped node took to answer again once restarted or resumed.
func (h *history) availability(r *report) {
	isDown := func(node string, t0, t1 time.Time) bool {
		for _, d := range h.downs {
			back := d.back
			if back.IsZero() {
				back = time.Now()
			}
			if d.node == node && t1.After(d.start) && t0.Before(back) {
				return true
			}
		}
		return false
	}
	// When each stopped node answered again.
	for _, d := range h.downs {
		for _, o := range h.ops {
			if o.kind == "verify" && o.node == d.node && !d.end.IsZero() && o.start.After(d.end) && !o.failed() {
				d.back = o.end
				if gap := d.back.Sub(d.end); gap > r.WorstRecovery {
					r.WorstRecovery = gap
				}
				break
			}
		}
	}
	worst := func(kinds string) time.Duration {
		var w time.Duration
		for _, node := range []string{"n1", "n2", "n3"} {
			var since time.Time
			for _, o := range h.ops {
				if o.node != node || !strings.Contains(kinds, o.kind) {
					continue
				}
				if isDown(node, o.start, o.end) {
					since = time.Time{}
					continue
				}
				if o.kind != "verify" && o.failed() {
					r.FailedWrites++
					if r.failures == nil {
						r.failures = map[string]int{}
					}
					r.failures[o.node+": "+o.answer]++
				}
				switch {
				case o.failed() && since.IsZero():
					since = o.start
				case !o.failed() && !since.IsZero():
					w = max(w, o.end.Sub(since))
					since = time.Time{}
				}
			}
		}
		return w
	}
	r.WorstVerify = worst("verify")
	r.WorstWrite = worst("create revoke")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
