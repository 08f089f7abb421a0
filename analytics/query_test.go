package analytics

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
)

// TestConsoleQueries ingests one small fleet (three keys, unknown-key
// attempts, several addresses and hours) and checks the web console's
// queries on it: Usage of all keys, TopSources and Hourly.
func TestConsoleQueries(t *testing.T) {
	t.Parallel()
	tj := MustStartJetStream(t)
	T := time.Date(2026, 4, 10, 12, 0, 0, 0, time.UTC) // an hour's start
	clock := T.Add(3 * time.Hour)
	a := MustOpen(t, Config{JetStream: tj.js, Now: func() time.Time { return clock }})
	MustStart(t, a)

	var evs []*events.KeyUsed
	add := func(n int, key string, o keyledger.Outcome, ip string, at time.Time) {
		for i := range n {
			evs = append(evs, used(key, keyledger.EnvLive, o, ip, at.Add(time.Duration(i)*time.Second)))
		}
	}
	add(5, "key_s1", keyledger.OutcomeValid, "10.0.0.1", T.Add(10*time.Minute))                   // hour 12
	add(1, "key_s1", keyledger.OutcomeValid, "", T.Add(10*time.Minute))                           // no address
	add(3, "key_s1", keyledger.OutcomeForbidden, "10.0.0.3", T.Add(-2*time.Hour+5*time.Minute))   // hour 10
	add(3, "key_s1", keyledger.OutcomeValid, "10.0.0.2", T.Add(time.Hour+30*time.Minute))         // hour 13
	add(2, "key_s1", keyledger.OutcomeRateLimited, "10.0.0.1", T.Add(2*time.Hour+59*time.Minute)) // hour 14
	add(9, "key_s2", keyledger.OutcomeValid, "10.0.0.9", T.Add(10*time.Minute))                   // hour 12
	add(1, "key_s2", keyledger.OutcomeValid, "10.0.0.1", T.Add(time.Hour))                        // hour 13
	add(4, "key_s3", keyledger.OutcomeValid, "10.0.0.4", T.Add(-48*time.Hour))                    // two days before
	add(6, "", keyledger.OutcomeUnknown, "203.0.113.7", T.Add(10*time.Minute))                    // no key
	publishUsage(t, tj.js, evs...)
	waitIngested(t, a, uint64(len(evs)), 30*time.Second)
	ctx := context.Background()

	t.Run("Usage all keys", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			from, to time.Time
		}{
			{"whole hours", T.Add(-3 * time.Hour), T.Add(3 * time.Hour)},
			// Partial minutes at both edges come from the raw rows.
			{"partial minutes", T.Add(10*time.Minute + 2*time.Second), T.Add(2*time.Hour + 59*time.Minute + time.Second)},
			{"within a minute", T.Add(10*time.Minute + 2*time.Second), T.Add(10*time.Minute + 4*time.Second)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				want := map[time.Time]uint64{}
				keys := map[string]bool{}
				for _, ev := range evs {
					if ev.KeyID != "" && !ev.At.Before(tc.from) && ev.At.Before(tc.to) {
						want[ev.At.Truncate(time.Hour)]++
						keys[ev.KeyID] = true
					}
				}
				if len(keys) < 2 {
					t.Fatalf("bad test: the range holds events of %d keys", len(keys))
				}
				pts, err := a.Usage(ctx, UsageQuery{All: true, From: tc.from, To: tc.to, Interval: Hour})
				if err != nil {
					t.Fatal(err)
				}
				got := map[time.Time]uint64{}
				for _, p := range pts {
					got[p.Time] += p.Count
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("all keys per hour = %v, want %v (points %+v)", got, want, pts)
				}
				// The same as the keys' own usage added up.
				perKey := map[time.Time]uint64{}
				for k := range keys {
					pts, err := a.Usage(ctx, UsageQuery{KeyID: k, From: tc.from, To: tc.to, Interval: Hour})
					if err != nil {
						t.Fatal(err)
					}
					for _, p := range pts {
						perKey[p.Time] += p.Count
					}
				}
				if fmt.Sprint(perKey) != fmt.Sprint(want) {
					t.Errorf("keys added up = %v, want %v", perKey, want)
				}
			})
		}
	})

	t.Run("TopSources", func(t *testing.T) {
		src := func(ip string, n uint64, last time.Time) SourceCount {
			return SourceCount{IP: ip, Count: n, LastSeen: last}
		}
		s1 := []SourceCount{
			src("10.0.0.1", 7, T.Add(2*time.Hour)),
			src("10.0.0.2", 3, T.Add(time.Hour)), // ties by IP
			src("10.0.0.3", 3, T.Add(-2*time.Hour)),
		}
		for _, tc := range []struct {
			name     string
			key      string
			from, to time.Time
			limit    int
			want     []SourceCount
		}{
			{"most first", "key_s1", T.Add(-3 * time.Hour), T.Add(3 * time.Hour), 0, s1},
			{"limit", "key_s1", T.Add(-3 * time.Hour), T.Add(3 * time.Hour), 2, s1[:2]},
			{"limit 1", "key_s1", T.Add(-3 * time.Hour), T.Add(3 * time.Hour), 1, s1[:1]},
			{"max limit", "key_s1", T.Add(-3 * time.Hour), T.Add(3 * time.Hour), MaxSources, s1},
			{"default range: the last 24 hours by the clock", "key_s1", time.Time{}, time.Time{}, 0, s1},
			// [12:30, 13:01) overlaps the hours 12 and 13.
			{"hours overlapping the range", "key_s1", T.Add(30 * time.Minute), T.Add(time.Hour + time.Minute), 0,
				[]SourceCount{src("10.0.0.1", 5, T), src("10.0.0.2", 3, T.Add(time.Hour))}},
			{"to is exclusive", "key_s1", T.Add(-3 * time.Hour), T.Add(time.Hour), 0,
				[]SourceCount{src("10.0.0.1", 5, T), src("10.0.0.3", 3, T.Add(-2*time.Hour))}},
			{"another key", "key_s2", T.Add(-3 * time.Hour), T.Add(3 * time.Hour), 0,
				[]SourceCount{src("10.0.0.9", 9, T), src("10.0.0.1", 1, T.Add(time.Hour))}},
			{"unused key", "key_none", T.Add(-3 * time.Hour), T.Add(3 * time.Hour), 0, []SourceCount{}},
			{"outside the range", "key_s3", T.Add(-3 * time.Hour), T.Add(3 * time.Hour), 0, []SourceCount{}},
			{"empty range", "key_s1", T.Add(10 * time.Minute), T.Add(10 * time.Minute), 0, []SourceCount{}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := a.TopSources(ctx, tc.key, tc.from, tc.to, tc.limit)
				if err != nil {
					t.Fatal(err)
				}
				if got == nil {
					t.Fatal("TopSources returned nil, want a non-nil slice")
				}
				if !slices.EqualFunc(got, tc.want, func(g, w SourceCount) bool {
					return g.IP == w.IP && g.Count == w.Count && g.LastSeen.Equal(w.LastSeen)
				}) {
					t.Errorf("TopSources = %+v, want %+v", got, tc.want)
				}
			})
		}
	})

	t.Run("Hourly", func(t *testing.T) {
		// Enough ids for three chunks, the used keys in different ones.
		many := make([]string, 2500)
		for i := range many {
			many[i] = fmt.Sprintf("key_pad_%d", i)
		}
		many[10], many[1500], many[2499] = "key_s1", "key_s2", "key_s3"
		year := make([]uint64, MaxHours) // key_s3 over the longest span up to the clock
		year[MaxHours-1-51] = 4          // 51 hours before the clock's hour
		for _, tc := range []struct {
			name  string
			keys  []string
			to    time.Time
			hours int
			want  map[string][]uint64
		}{
			// start = 11:00: buckets 11, 12, 13, 14.
			{"buckets", []string{"key_s1", "key_s2", "key_s3", "key_none"}, T.Add(2*time.Hour + 30*time.Minute), 4,
				map[string][]uint64{"key_s1": {0, 6, 3, 2}, "key_s2": {0, 9, 1, 0}}},
			{"to on an hour's start", []string{"key_s1", "key_s2"}, T.Add(time.Hour), 2,
				map[string][]uint64{"key_s1": {6, 3}, "key_s2": {9, 1}}},
			{"one hour", []string{"key_s1", "key_s2"}, T.Add(time.Hour + 5*time.Minute), 1,
				map[string][]uint64{"key_s1": {3}, "key_s2": {1}}},
			{"zero to is the clock", []string{"key_s1", "key_s2"}, time.Time{}, 3,
				map[string][]uint64{"key_s1": {3, 2, 0}, "key_s2": {1, 0, 0}}},
			{"most hours", []string{"key_s3"}, time.Time{}, MaxHours, map[string][]uint64{"key_s3": year}},
			{"chunks", many, T.Add(2 * time.Hour), 3,
				map[string][]uint64{"key_s1": {6, 3, 2}, "key_s2": {9, 1, 0}}},
			{"unused keys", []string{"key_none", "key_s3"}, T.Add(2 * time.Hour), 24, map[string][]uint64{}},
			{"no keys", nil, T, 24, map[string][]uint64{}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := a.Hourly(ctx, tc.keys, tc.to, tc.hours)
				if err != nil {
					t.Fatal(err)
				}
				if got == nil || len(got) != len(tc.want) {
					t.Fatalf("Hourly = %v, want %v", got, tc.want)
				}
				for k, w := range tc.want {
					if !slices.Equal(got[k], w) {
						t.Errorf("Hourly[%s] = %v, want %v", k, got[k], w)
					}
				}
			})
		}
	})
}

// TestConsoleQueriesInvalid: bad arguments of the console's queries are
// Invalid errors, answered before ClickHouse is asked.
func TestConsoleQueriesInvalid(t *testing.T) {
	t.Parallel()
	a := MustOpen(t, Config{})
	ctx := context.Background()
	T := time.Date(2026, 4, 10, 12, 0, 0, 0, time.UTC)
	usage := func(q UsageQuery) func() error {
		return func() error { _, err := a.Usage(ctx, q); return err }
	}
	top := func(key string, from, to time.Time, limit int) func() error {
		return func() error { _, err := a.TopSources(ctx, key, from, to, limit); return err }
	}
	hourly := func(keys []string, hours int) func() error {
		return func() error { _, err := a.Hourly(ctx, keys, T, hours); return err }
	}
	const oneOf, oneOfAll = "give exactly one of key_id and owner", "give exactly one of key_id, owner and all"
	for _, tc := range []struct {
		name string
		call func() error
		msg  string // the message, if it matters
	}{
		{"usage: no selector", usage(UsageQuery{}), oneOf},
		{"usage: key and owner", usage(UsageQuery{KeyID: "key_s1", Owner: "acme"}), oneOf},
		{"usage: all and key", usage(UsageQuery{All: true, KeyID: "key_s1"}), oneOfAll},
		{"usage: all and owner", usage(UsageQuery{All: true, Owner: "acme"}), oneOfAll},
		{"usage: all, bad interval", usage(UsageQuery{All: true, Interval: "fortnight"}), ""},
		{"usage: all, from after to", usage(UsageQuery{All: true, From: T, To: T.Add(-time.Second)}), ""},
		{"usage: all, too many points", usage(UsageQuery{All: true, From: T.AddDate(-1, 0, 0), To: T, Interval: Minute}), ""},
		{"sources: no key", top("", T.Add(-time.Hour), T, 0), ""},
		{"sources: bad key", top("key s1'", T.Add(-time.Hour), T, 0), ""},
		{"sources: negative limit", top("key_s1", T.Add(-time.Hour), T, -1), ""},
		{"sources: limit too large", top("key_s1", T.Add(-time.Hour), T, MaxSources+1), ""},
		{"sources: from after to", top("key_s1", T, T.Add(-time.Hour), 0), ""},
		{"hourly: zero hours", hourly([]string{"key_s1"}, 0), ""},
		{"hourly: negative hours", hourly([]string{"key_s1"}, -1), ""},
		{"hourly: too many hours", hourly([]string{"key_s1"}, MaxHours+1), ""},
		{"hourly: empty key", hourly([]string{"key_s1", ""}, 24), ""},
		{"hourly: bad key", hourly([]string{"key_s1", "key s1'"}, 24), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, keyledger.ErrInvalid) {
				t.Fatalf("err = %v, want an Invalid error", err)
			}
			if tc.msg != "" && keyledger.ErrorMessage(err) != tc.msg {
				t.Errorf("message %q, want %q", keyledger.ErrorMessage(err), tc.msg)
			}
		})
	}
}
