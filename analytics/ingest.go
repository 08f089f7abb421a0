package analytics

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/google/uuid"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetterSubjectPrefix + lower-case stream name is the subject an
// undecodable event is republished on, with these headers.
const (
	DeadLetterSubjectPrefix = nats.DeadLetterSubjectPrefix
	// HeaderDeadLetterReason says why the event was refused.
	HeaderDeadLetterReason = "Keyledger-Dead-Letter-Reason"
	// HeaderDeadLetterStream, HeaderDeadLetterSubject and
	// HeaderDeadLetterSeq locate the original message.
	HeaderDeadLetterStream  = "Keyledger-Dead-Letter-Stream"
	HeaderDeadLetterSubject = "Keyledger-Dead-Letter-Subject"
	HeaderDeadLetterSeq     = "Keyledger-Dead-Letter-Seq"
)

// DeadLetterSubject returns the dead-letter subject of a stream
// ("keyledger.deadletter.usage" for USAGE).
func DeadLetterSubject(stream string) string {
	return DeadLetterSubjectPrefix + strings.ToLower(stream)
}

// sink accumulates the rows of one batch and writes them to ClickHouse.
type sink interface {
	// add decodes one message and buffers its row. An error marks the
	// message as undecodable (dead letter); the batch is unchanged.
	add(subject string, data []byte, seq uint64, redelivered bool) error
	// len is the number of messages accepted since reset.
	len() int
	// write inserts the buffered rows, skipping those already stored.
	write(ctx context.Context) (written, skipped int, err error)
	// newest is the unix time of the newest event buffered.
	newest() int64
	reset()
}

// ingestSpec describes one stream to ingest.
type ingestSpec struct {
	stream  string // JetStream stream
	name    string // short name: consumer suffix, metric label
	newSink func(a *Analytics, checkUpTo *atomic.Uint64) sink
	// storedUpTo returns the highest stream sequence already stored (0
	// if none, or if the sink needs no redelivery check).
	storedUpTo func(ctx context.Context, a *Analytics) (uint64, error)
}

func usageSpec() ingestSpec {
	return ingestSpec{stream: nats.UsageStream, name: "usage",
		newSink: func(a *Analytics, checkUpTo *atomic.Uint64) sink { return newUsageSink(a, checkUpTo) },
		storedUpTo: func(ctx context.Context, a *Analytics) (uint64, error) {
			var seq uint64
			err := a.conn.QueryRow(ctx, "SELECT max(stream_seq) FROM usage_events").Scan(&seq)
			return seq, err
		}}
}

func keysSpec() ingestSpec {
	return ingestSpec{stream: nats.KeysStream, name: "keys",
		newSink: func(a *Analytics, _ *atomic.Uint64) sink { return &keysSink{a: a} }}
}

// batch is one batch in flight: its rows (in the sink) and the messages
// to acknowledge once they are stored.
type batch struct {
	sink    sink
	msgs    []jetstream.Msg
	pending uint64
	stored  bool          // the writer stored the batch
	retryIn time.Duration // when not: the redelivery delay
}

// ingester runs one stream's pipeline in three goroutines: the reader
// decodes messages into batches, the writer inserts them, the acker
// acknowledges them. Batches circulate, so the three stages overlap.
type ingester struct {
	a    *Analytics
	spec ingestSpec
	cc   jetstream.ConsumerConfig

	mu   sync.Mutex
	cons jetstream.Consumer

	// checkUpTo is the highest stream sequence stored when the consumer
	// was (re)created: messages up to it may be stored already.
	checkUpTo atomic.Uint64
	// maxRead is the highest stream sequence read.
	maxRead atomic.Uint64

	free    chan *batch // empty batches, for the reader
	full    chan *batch // read batches, for the writer
	written chan *batch // written (or failed) batches, for the acker

	// testAfterWrite, if set, runs after a batch of n events is stored
	// and before it is acknowledged; returning false drops the
	// acknowledgements (a crash).
	testAfterWrite func(n int) bool
}

// prefetchBytes bounds the messages a consumer pulls ahead of the batches.
const prefetchBytes = 32 << 20

// pipelineDepth is the number of batches alive at once.
const pipelineDepth = 3

func (a *Analytics) newIngester(ctx context.Context, spec ingestSpec) (*ingester, error) {
	cfg := a.cfg
	cc := jetstream.ConsumerConfig{
		Durable:       cfg.ConsumerPrefix + "-" + spec.name,
		Description:   "keyledger analytics: " + spec.stream + " into ClickHouse",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1, // while ClickHouse is down events wait; never drop them
		MaxAckPending: (pipelineDepth + 1) * cfg.BatchSize,
	}
	in := &ingester{
		a:       a,
		spec:    spec,
		cc:      cc,
		free:    make(chan *batch, pipelineDepth),
		full:    make(chan *batch, pipelineDepth),
		written: make(chan *batch, pipelineDepth),
	}
	if err := in.createConsumer(ctx); err != nil {
		return nil, err
	}
	for range pipelineDepth {
		in.free <- &batch{sink: spec.newSink(a, &in.checkUpTo)}
	}
	return in, nil
}

// createConsumer creates (or updates) the durable consumer. A consumer
// that is new, or was deleted and created again, delivers everything anew
// as first deliveries: events up to the highest sequence already stored
// are then checked like redeliveries.
func (in *ingester) createConsumer(ctx context.Context) error {
	if in.spec.storedUpTo != nil {
		upTo, err := in.spec.storedUpTo(ctx, in.a)
		if err != nil {
			return keyledger.Wrap(keyledger.Unavailable, err, "cannot read the ingest position")
		}
		// Events read but not yet stored may land after the query: count
		// them as maybe stored too.
		in.checkUpTo.Store(max(upTo, in.checkUpTo.Load(), in.maxRead.Load()))
	}
	cons, err := in.a.cfg.JetStream.CreateOrUpdateConsumer(ctx, in.spec.stream, in.cc)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, fmt.Sprintf("cannot create the analytics consumer on %s", in.spec.stream))
	}
	in.mu.Lock()
	in.cons = cons
	in.mu.Unlock()
	return nil
}

// consumer returns the current consumer.
func (in *ingester) consumer() jetstream.Consumer {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.cons
}

func (in *ingester) start(stopCtx, killCtx context.Context, wg *sync.WaitGroup) error {
	wg.Add(3)
	go func() {
		defer wg.Done()
		defer close(in.full)
		in.read(stopCtx)
	}()
	go func() {
		defer wg.Done()
		in.writeLoop(stopCtx, killCtx)
	}()
	go func() {
		defer wg.Done()
		in.ackLoop()
	}()
	return nil
}

// read fills batches until stopCtx is done, then hands over the partial
// batch and returns.
func (in *ingester) read(stopCtx context.Context) {
	cfg := in.a.cfg
	log := in.a.log.With("stream", in.spec.stream)
	// Prefetch is bounded in bytes: a USAGE message may be one event or a
	// batch of a thousand.
	prefetch := jetstream.PullMaxBytes(prefetchBytes)
	var (
		it       jetstream.MessagesContext
		b        *batch
		batchCtx context.Context
		cancel   context.CancelFunc = func() {}
		backoff                     = cfg.RetryDelay
	)
	defer func() {
		cancel()
		if it != nil {
			it.Stop()
		}
	}()
	send := func() {
		cancel()
		batchCtx, cancel = nil, func() {}
		in.full <- b
		b = nil
	}
	for {
		if it == nil {
			var err error
			it, err = in.consumer().Messages(prefetch)
			if err != nil {
				log.Warn("analytics: cannot pull messages", "err", err)
				it = nil
				if consumerGone(err) {
					if err := in.createConsumer(stopCtx); err != nil {
						log.Warn("analytics: cannot recreate the consumer", "err", err)
					}
				}
				if !sleep(stopCtx, backoff) {
					if b != nil && b.sink.len() > 0 {
						send()
					}
					return
				}
				backoff = min(2*backoff, cfg.MaxRetryDelay)
				continue
			}
			backoff = cfg.RetryDelay
		}
		if b == nil {
			select {
			case b = <-in.free:
			case <-stopCtx.Done():
				return
			}
		}
		waitCtx := stopCtx
		if batchCtx != nil {
			waitCtx = batchCtx
		}
		msg, err := it.Next(jetstream.NextContext(waitCtx))
		if err != nil {
			switch {
			case stopCtx.Err() != nil:
				if len(b.msgs) > 0 {
					send()
				}
				return
			case batchCtx != nil && batchCtx.Err() != nil:
				send()
			case errors.Is(err, jetstream.ErrMsgIteratorClosed) || consumerGone(err):
				log.Warn("analytics: message iterator closed; reopening", "err", err)
				it.Stop()
				it = nil
				if consumerGone(err) {
					if err := in.createConsumer(stopCtx); err != nil {
						log.Warn("analytics: cannot recreate the consumer", "err", err)
					}
				}
				sleep(stopCtx, backoff)
			default:
				log.Warn("analytics: pulling messages", "err", err)
				sleep(stopCtx, backoff)
			}
			continue
		}
		if in.add(b, msg) && batchCtx == nil {
			batchCtx, cancel = withTimeout(stopCtx, cfg.FlushInterval)
		}
		if b.sink.len() >= cfg.BatchSize {
			send()
		}
	}
}

// consumerGone reports whether err says the durable consumer no longer
// exists (deleted by an operator, or lost with the server's state).
func consumerGone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound)
}

// add decodes msg into b. It reports whether the message joined the batch
// (an undecodable one is dead-lettered instead).
func (in *ingester) add(b *batch, msg jetstream.Msg) bool {
	meta, err := msg.Metadata()
	if err != nil {
		in.deadLetter(msg, 0, "not a JetStream message: "+err.Error())
		return false
	}
	if err := b.sink.add(msg.Subject(), msg.Data(), meta.Sequence.Stream, meta.NumDelivered > 1); err != nil {
		var forged *forgeryError
		if errors.As(err, &forged) {
			in.a.raiseLedgerAlert(RuleLedgerForgery, msg.Subject(), fmt.Sprintf("KEYS event at sequence %d refused: %s", meta.Sequence.Stream, forged.reason))
		}
		in.deadLetter(msg, meta.Sequence.Stream, err.Error())
		return false
	}
	b.msgs = append(b.msgs, msg)
	b.pending = meta.NumPending
	if meta.Sequence.Stream > in.maxRead.Load() {
		in.maxRead.Store(meta.Sequence.Stream) // only the reader writes it
	}
	return true
}

// deadLetter republishes an undecodable message on the dead-letter subject
// and terminates it, so it is not redelivered.
func (in *ingester) deadLetter(msg jetstream.Msg, seq uint64, reason string) {
	a := in.a
	log := a.log.With("stream", in.spec.stream, "seq", seq)
	if nc := a.cfg.NATS; nc != nil {
		dl := natsgo.NewMsg(DeadLetterSubject(in.spec.stream))
		dl.Data = msg.Data()
		dl.Header.Set(HeaderDeadLetterReason, reason)
		dl.Header.Set(HeaderDeadLetterStream, in.spec.stream)
		dl.Header.Set(HeaderDeadLetterSubject, msg.Subject())
		dl.Header.Set(HeaderDeadLetterSeq, strconv.FormatUint(seq, 10))
		if err := nc.PublishMsg(dl); err != nil {
			log.Warn("analytics: cannot publish dead letter; will retry", "err", err)
			_ = msg.NakWithDelay(a.cfg.RetryDelay)
			return
		}
	}
	log.Warn("analytics: undecodable event sent to dead letters", "reason", reason, "subject", msg.Subject())
	a.metrics.deadLetters.WithLabelValues(in.spec.stream).Inc()
	if err := msg.TermWithReason("undecodable: " + truncate(reason, 200)); err != nil {
		log.Warn("analytics: cannot terminate dead letter", "err", err)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// writeLoop writes the batches the reader sends until it closes the
// channel, and hands them to the acknowledging stage.
func (in *ingester) writeLoop(stopCtx, killCtx context.Context) {
	defer close(in.written)
	delay := in.a.cfg.RetryDelay
	for b := range in.full {
		b.stored = in.write(killCtx, b, delay)
		if b.stored {
			delay = in.a.cfg.RetryDelay
		}
		in.written <- b
		if !b.stored {
			// Slow down while ClickHouse refuses: the reader blocks on
			// the free batches meanwhile.
			sleep(stopCtx, delay)
			delay = min(2*delay, in.a.cfg.MaxRetryDelay)
		}
	}
}

// ackLoop acknowledges stored batches (or asks for the redelivery of the
// others) and recycles them. It runs apart from the writer so that
// acknowledging one batch overlaps inserting the next.
func (in *ingester) ackLoop() {
	a := in.a
	stream := in.spec.stream
	for b := range in.written {
		switch {
		case !b.stored:
			for _, m := range b.msgs {
				_ = m.NakWithDelay(b.retryIn)
			}
		case in.testAfterWrite != nil && !in.testAfterWrite(b.sink.len()):
			// acknowledgements lost
		default:
			var ackErr error
			for _, m := range b.msgs {
				if err := m.Ack(); err != nil && ackErr == nil {
					ackErr = err
				}
			}
			if ackErr != nil {
				// Harmless: the events are stored; their redelivery is recognized.
				a.log.Warn("analytics: acknowledging a stored batch failed", "stream", stream, "err", ackErr)
			}
		}
		b.sink.reset()
		clear(b.msgs)
		b.msgs = b.msgs[:0]
		in.free <- b
	}
}

// write stores one batch. On failure the batch is to be redelivered after
// delay. It reports success.
func (in *ingester) write(killCtx context.Context, b *batch, delay time.Duration) bool {
	a := in.a
	stream := in.spec.stream
	ctx, cancel := context.WithTimeout(killCtx, a.cfg.InsertTimeout)
	defer cancel()
	start := time.Now()
	written, skipped, err := b.sink.write(ctx)
	if err != nil {
		a.metrics.batches.WithLabelValues(stream, "error").Inc()
		a.log.Warn("analytics: insert failed; events will be redelivered", "stream", stream,
			"events", len(b.msgs), "retry_in", delay, "err", err)
		b.retryIn = delay
		return false
	}
	elapsed := time.Since(start)
	a.metrics.insertTime.WithLabelValues(stream).Observe(elapsed.Seconds())
	a.log.Debug("analytics: batch stored", "stream", stream, "events", len(b.msgs), "written", written,
		"skipped", skipped, "insert", elapsed)
	a.metrics.batches.WithLabelValues(stream, "ok").Inc()
	a.metrics.rows.WithLabelValues(stream).Add(float64(written))
	if skipped > 0 {
		a.metrics.duplicates.WithLabelValues(stream).Add(float64(skipped))
	}
	if n := b.sink.newest(); n > 0 {
		a.metrics.lag.WithLabelValues(stream).Set(a.now().Sub(time.Unix(n, 0)).Seconds())
	}
	a.metrics.pending.WithLabelValues(stream).Set(float64(b.pending))
	return true
}

// withTimeout is context.WithTimeout for contexts whose cancel is kept in
// a variable across loop iterations.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}

// sleep waits d or until ctx is done; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// usageColumns is the column list of usage_events inserts (ClickHouse
// 18.16 needs it explicit).
const usageColumns = "event_id, ts, ms, key_id, environment, outcome, permission, ip, user_agent, method, path, node, latency_us, stream_seq"

// usageSink buffers KeyUsed rows column-wise.
type usageSink struct {
	a    *Analytics
	rows []usageRow
	seqs []uint64
	// again lists rows delivered before, or with a stream sequence not
	// above checkUpTo: they may already be stored.
	again     []int
	checkUpTo *atomic.Uint64
	seen      map[uuid.UUID]struct{}
	n         int // messages accepted, duplicates within the batch included
	max       int64
	dups      int // duplicates within the batch

	// column buffers, reused across batches
	cID                                                    []uuid.UUID
	cTS, cLat                                              []int64
	cMS                                                    []uint16
	cKey, cEnv, cOut, cPerm, cIP, cUA, cMeth, cPath, cNode []string
	cSeq                                                   []uint64
}

func newUsageSink(a *Analytics, checkUpTo *atomic.Uint64) *usageSink {
	return &usageSink{a: a, seen: make(map[uuid.UUID]struct{}), checkUpTo: checkUpTo}
}

// add decodes one USAGE message: one KeyUsed event or a batch of them. A
// message is the unit of acknowledgement, so one undecodable event sends
// the whole message to the dead letters and none of its events is kept.
func (s *usageSink) add(subject string, data []byte, seq uint64, redelivered bool) error {
	rows, seqs, again, n, dups, maxSec := len(s.rows), len(s.seqs), len(s.again), s.n, s.dups, s.max
	count := 0
	var err error
	// The server lets a node publish batches only on its own subject: a
	// batch whose events name another node is usage forged in its name.
	node := batchNode(subject)
	for ev, rest := events.NextUsage(data); ev != nil; ev, rest = events.NextUsage(rest) {
		if err = s.addEvent(ev, node, seq, redelivered); err != nil {
			if count > 0 {
				err = fmt.Errorf("event %d of the batch: %w", count+1, err)
			}
			break
		}
		count++
	}
	if err == nil && count == 0 {
		err = errors.New("empty message: no KeyUsed event")
	}
	if err != nil {
		for _, r := range s.rows[rows:] {
			delete(s.seen, r.eventID)
		}
		clear(s.rows[rows:])
		s.rows, s.seqs, s.again, s.n, s.dups, s.max = s.rows[:rows], s.seqs[:seqs], s.again[:again], n, dups, maxSec
		return err
	}
	return nil
}

// batchNode is the publishing node of a batch subject
// (keyledger.usage.<env>.batch.<node>), or "".
func batchNode(subject string) string {
	rest, ok := strings.CutPrefix(subject, nats.UsageSubjectPrefix)
	if !ok {
		return ""
	}
	_, rest, _ = strings.Cut(rest, ".")
	node, ok := strings.CutPrefix(rest, "batch.")
	if !ok {
		return ""
	}
	return node
}

func clipStr(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// addEvent decodes one event of a message.
func (s *usageSink) addEvent(data []byte, node string, seq uint64, redelivered bool) error {
	s.rows = append(s.rows, usageRow{})
	r := &s.rows[len(s.rows)-1]
	if err := decodeKeyUsed(data, r); err != nil {
		s.rows = s.rows[:len(s.rows)-1]
		return err
	}
	if node != "" && r.node != node {
		err := fmt.Errorf("the event names node %q but was published by %q", clipStr(r.node, 64), node)
		s.rows = s.rows[:len(s.rows)-1]
		return err
	}
	s.n++
	if _, dup := s.seen[r.eventID]; dup {
		s.rows = s.rows[:len(s.rows)-1]
		s.dups++
		return nil
	}
	s.seen[r.eventID] = struct{}{}
	if redelivered || seq <= s.checkUpTo.Load() {
		s.again = append(s.again, len(s.rows)-1)
	}
	s.seqs = append(s.seqs, seq)
	s.max = max(s.max, r.sec)
	return nil
}

func (s *usageSink) len() int      { return s.n }
func (s *usageSink) newest() int64 { return s.max }

func (s *usageSink) reset() {
	clear(s.rows) // drop references to message strings
	s.rows, s.seqs, s.again = s.rows[:0], s.seqs[:0], s.again[:0]
	clear(s.seen)
	s.n, s.max, s.dups = 0, 0, 0
}

func (s *usageSink) write(ctx context.Context) (int, int, error) {
	skip := map[int]bool{}
	if len(s.again) > 0 {
		stored, err := s.a.storedUsage(ctx, s.rows, s.again)
		if err != nil {
			return 0, 0, err
		}
		for _, i := range s.again {
			if stored[s.rows[i].eventID] {
				skip[i] = true
			}
		}
	}
	// One INSERT per month partition: an INSERT into a single partition is
	// one part, written whole or not at all, together with its
	// materialized views.
	groups := map[int64][]int{}
	var months []int64
	for i := range s.rows {
		if skip[i] {
			continue
		}
		m := monthOf(s.rows[i].sec)
		if _, ok := groups[m]; !ok {
			months = append(months, m)
		}
		groups[m] = append(groups[m], i)
	}
	written := 0
	for _, m := range months {
		idx := groups[m]
		if len(months) == 1 && len(idx) == len(s.rows) {
			idx = nil // all rows, in order
		}
		n, err := s.insert(ctx, idx)
		if err != nil {
			return written, 0, err
		}
		written += n
	}
	return written, len(skip) + s.dups, nil
}

// monthOf returns yyyymm of a unix time.
func monthOf(sec int64) int64 {
	t := time.Unix(sec, 0).UTC()
	return int64(t.Year())*100 + int64(t.Month())
}

// insert inserts the rows at idx (nil: all rows) in one INSERT.
func (s *usageSink) insert(ctx context.Context, idx []int) (int, error) {
	n := len(s.rows)
	if idx != nil {
		n = len(idx)
	}
	s.cID, s.cTS, s.cLat, s.cMS, s.cSeq = s.cID[:0], s.cTS[:0], s.cLat[:0], s.cMS[:0], s.cSeq[:0]
	strs := []*[]string{&s.cKey, &s.cEnv, &s.cOut, &s.cPerm, &s.cIP, &s.cUA, &s.cMeth, &s.cPath, &s.cNode}
	for _, c := range strs {
		*c = (*c)[:0]
	}
	for j := 0; j < n; j++ {
		i := j
		if idx != nil {
			i = idx[j]
		}
		r := &s.rows[i]
		s.cID = append(s.cID, r.eventID)
		s.cTS = append(s.cTS, r.sec)
		s.cMS = append(s.cMS, r.ms)
		s.cKey = append(s.cKey, r.keyID)
		s.cEnv = append(s.cEnv, r.env)
		s.cOut = append(s.cOut, r.outcome)
		s.cPerm = append(s.cPerm, r.permission)
		s.cIP = append(s.cIP, r.ip)
		s.cUA = append(s.cUA, r.userAgent)
		s.cMeth = append(s.cMeth, r.method)
		s.cPath = append(s.cPath, r.path)
		s.cNode = append(s.cNode, r.node)
		s.cLat = append(s.cLat, r.latencyUS)
		s.cSeq = append(s.cSeq, s.seqs[i])
	}
	if n == 0 {
		return 0, nil
	}
	b, err := s.a.conn.PrepareBatch(ctx, "INSERT INTO usage_events ("+usageColumns+")")
	if err != nil {
		return 0, err
	}
	defer b.Close()
	cols := []any{s.cID, s.cTS, s.cMS, s.cKey, s.cEnv, s.cOut, s.cPerm, s.cIP, s.cUA, s.cMeth, s.cPath, s.cNode, s.cLat, s.cSeq}
	for i, c := range cols {
		if err := b.Column(i).Append(c); err != nil {
			return 0, fmt.Errorf("column %d: %w", i, err)
		}
	}
	if err := b.Send(); err != nil {
		return 0, err
	}
	// Drop references to message strings held by the column buffers.
	for _, c := range strs {
		clear(*c)
	}
	return n, nil
}

// storedUsage returns which of rows[idx] are already in usage_events.
func (a *Analytics) storedUsage(ctx context.Context, rows []usageRow, idx []int) (map[uuid.UUID]bool, error) {
	stored := map[uuid.UUID]bool{}
	const chunk = 2000
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"max_query_size": 16 << 20}))
	for start := 0; start < len(idx); start += chunk {
		part := idx[start:min(start+chunk, len(idx))]
		lo, hi := rows[part[0]].sec, rows[part[0]].sec
		keys := map[string]bool{}
		var sb strings.Builder
		sb.WriteString("SELECT event_id FROM usage_events WHERE ts >= toDateTime(")
		for _, i := range part {
			lo, hi = min(lo, rows[i].sec), max(hi, rows[i].sec)
			keys[rows[i].keyID] = true
		}
		fmt.Fprintf(&sb, "%d) AND ts <= toDateTime(%d) AND key_id IN (", lo, hi)
		first := true
		for k := range keys {
			if !first {
				sb.WriteByte(',')
			}
			first = false
			sb.WriteString(quote(k))
		}
		sb.WriteString(") AND event_id IN (")
		for j, i := range part {
			if j > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString("'" + rows[i].eventID.String() + "'")
		}
		sb.WriteString(")")
		if err := a.scanIDs(ctx, sb.String(), stored); err != nil {
			return nil, err
		}
	}
	return stored, nil
}

func (a *Analytics) scanIDs(ctx context.Context, q string, into map[uuid.UUID]bool) error {
	rows, err := a.conn.Query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			return err
		}
		into[id] = true
	}
	return rows.Err()
}

// quote returns s as a ClickHouse string literal.
func quote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		case 0:
			b.WriteString(`\0`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

const keyColumns = "event_id, type, key_id, actor, ts, ms, reason, name, owner, environment, permissions, hint, expires_at_ms, stream_seq, actor_ip, changed, leaf_hash"

// keysSink buffers key lifecycle rows. Key events are few; every query of
// key_events deduplicates (FINAL), so no redelivery check is needed.
type keysSink struct {
	a    *Analytics
	rows []AuditRow
	max  int64
}

// add derives the row through auditRowOf, the derivation AuditRowOf gives
// the ledger checker, so what it recomputes is what was stored.
func (s *keysSink) add(subject string, data []byte, seq uint64, _ bool) error {
	r, err := auditRowOf(s.a.cfg.Keyring, seq, subject, data)
	if err != nil {
		return err
	}
	s.rows = append(s.rows, r)
	s.max = max(s.max, r.At.Unix())
	return nil
}

func (s *keysSink) len() int      { return len(s.rows) }
func (s *keysSink) newest() int64 { return s.max }
func (s *keysSink) reset()        { clear(s.rows); s.rows = s.rows[:0]; s.max = 0 }

func (s *keysSink) write(ctx context.Context) (int, int, error) {
	if len(s.rows) == 0 {
		return 0, 0, nil
	}
	b, err := s.a.conn.PrepareBatch(ctx, "INSERT INTO key_events ("+keyColumns+")")
	if err != nil {
		return 0, 0, err
	}
	defer b.Close()
	for _, r := range s.rows {
		sec, ms := splitMilli(r.At)
		if err := b.Append(r.EventID, r.Type, r.KeyID, r.Actor, time.Unix(sec, 0).UTC(), ms, r.Reason,
			r.Name, r.Owner, r.Environment, r.Permissions, r.Hint, r.ExpiresMS, r.Seq, r.ActorIP, r.Changed,
			r.LeafHash); err != nil {
			return 0, 0, err
		}
	}
	if err := b.Send(); err != nil {
		return 0, 0, err
	}
	return len(s.rows), 0, nil
}

// forgeryError is a KEYS event no trusted key signed (or on the wrong
// subject): not recorded in the audit, dead-lettered, and alerted.
type forgeryError struct{ reason string }

func (e *forgeryError) Error() string { return "refused ledger event: " + e.reason }
