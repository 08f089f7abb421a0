package audit

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/events"
	"golang.org/x/mod/sumdb/tlog"
)

// ClickHouseCheck compares analytics' audit rows (key_events) with the
// ledger event by event, as Verify reads the ledger: every event analytics
// records must have its row, equal in every column to the row recomputed
// from the event (leaf hash included), and no row may exist without its
// event. Wire it with Options, then call Finish.
type ClickHouseCheck struct {
	rows   chan analytics.AuditRow
	errc   chan error
	cancel context.CancelFunc
	next   *analytics.AuditRow
	closed bool
	// ids counts the ledger's recorded events by event id: a replayed
	// copy of an event collapses with it into one row (ReplacingMergeTree),
	// so one of the two has no row of its own.
	ids      map[string]int
	missing  []analytics.AuditRow
	failures []Failure // at most maxFailures
	maxSeq   uint64
	// Rows is the number of rows read; Compared those matched to events;
	// Pending the newest events analytics has not ingested yet (no row,
	// after every row, less than IngestGrace old).
	Rows, Compared, Pending int
	// Now is the clock Pending is judged by (default time.Now).
	Now func() time.Time
}

// IngestGrace is how old an event without a row, newer than every row,
// must be to count as removed rather than not yet ingested.
const IngestGrace = 5 * time.Minute

// NewClickHouseCheck starts reading the rows of the ClickHouse at dsn.
func NewClickHouseCheck(ctx context.Context, dsn string) *ClickHouseCheck {
	ctx, cancel := context.WithCancel(ctx)
	c := &ClickHouseCheck{rows: make(chan analytics.AuditRow, 4096), errc: make(chan error, 1), cancel: cancel, ids: map[string]int{}}
	go func() {
		defer close(c.rows)
		c.errc <- analytics.ReadAuditRows(ctx, dsn, func(r analytics.AuditRow) error {
			select {
			case c.rows <- r:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return c
}

// Options sets the hooks of opts that feed the check.
func (c *ClickHouseCheck) Options(opts *VerifyOptions) {
	opts.Prepare = func(ring *events.Keyring, ev BundleEvent) any {
		row, ok, err := analytics.AuditRowOf(ring, ev.Seq, ev.Subject, ev.Data)
		if !ok || err != nil {
			return nil
		}
		return row
	}
	opts.Observe = c.observe
}

func (c *ClickHouseCheck) peek() *analytics.AuditRow {
	if c.next == nil && !c.closed {
		r, ok := <-c.rows
		if !ok {
			c.closed = true
			return nil
		}
		c.Rows++
		c.maxSeq = max(c.maxSeq, r.Seq)
		c.next = &r
	}
	return c.next
}

// found records a failure for Finish to add to the report.
func (c *ClickHouseCheck) found(f Failure) {
	if len(c.failures) < maxFailures {
		c.failures = append(c.failures, f)
	}
}

func (c *ClickHouseCheck) observe(seq uint64, leaf tlog.Hash, _ bool, prepared any) error {
	for r := c.peek(); r != nil && r.Seq < seq; r = c.peek() {
		c.extra(*r)
		c.next = nil
	}
	want, ok := prepared.(analytics.AuditRow)
	if !ok {
		return nil // analytics records no row for a refused event
	}
	if want.LeafHash != hex.EncodeToString(leaf[:]) {
		return errors.New("audit: the leaf hash of a recomputed row differs from the tree's")
	}
	c.ids[want.EventID]++
	if r := c.peek(); r != nil && r.Seq == seq {
		c.Compared++
		if field := analytics.DiffAuditRow(want, *r); field != "" {
			c.found(Failure{Kind: "clickhouse", Seq: seq, Expected: want.Column(field), Found: r.Column(field),
				Detail: fmt.Sprintf("ClickHouse's audit row of event %d differs from the ledger in %s", seq, field)})
		}
		c.next = nil
		return nil
	}
	c.missing = append(c.missing, want)
	return nil
}

func (c *ClickHouseCheck) extra(r analytics.AuditRow) {
	c.found(Failure{Kind: "clickhouse", Seq: r.Seq, Found: r.Type + " " + r.KeyID,
		Detail: fmt.Sprintf("ClickHouse holds an audit row for event %d, which the ledger does not record", r.Seq)})
}

// Close stops the reader without a verdict (Verify failed).
func (c *ClickHouseCheck) Close() { c.cancel() }

// Finish drains the rows left, stops the reader, and adds what the check
// found to rep.
func (c *ClickHouseCheck) Finish(rep *Report) error {
	for r := c.peek(); r != nil; r = c.peek() {
		c.extra(*r)
		c.next = nil
	}
	c.cancel()
	err := <-c.errc
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	for _, m := range c.missing {
		if c.ids[m.EventID] > 1 {
			continue // a replayed copy: one row for both
		}
		if m.Seq > c.maxSeq && now().Sub(m.At) < IngestGrace {
			c.Pending++
			continue
		}
		c.found(Failure{Kind: "clickhouse", Seq: m.Seq, Expected: m.Type + " " + m.KeyID,
			Detail: fmt.Sprintf("ClickHouse has no audit row for event %d (%s of %s): it was removed", m.Seq, m.Type, m.KeyID)})
	}
	// ClickHouse's findings come after the ledger's own.
	for _, f := range c.failures {
		rep.fail(f)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
