package nats

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/nats-io/nats.go/jetstream"
)

// UsageOptions configure a UsagePublisher.
type UsageOptions struct {
	// Buffer is how many events may wait for publishing (default 65536).
	// When it is full, events are shed and counted, never blocking a
	// request.
	Buffer int
	// Batch is the most events one USAGE message carries (default 1024).
	Batch int
	// MaxBytes is the most bytes one USAGE message carries (default 256 KiB,
	// well under NATS's default 1 MiB max_payload).
	MaxBytes int
	// Linger is how long a batch waits for more events after its first
	// (default 20ms; negative: not at all). Usage is not latency-critical,
	// and every USAGE message costs the stream an fsync per replica when
	// it is replicated: on a 3-node cluster sharing one disk, a 2 ms
	// linger doubled the p99 of revocations.
	Linger time.Duration
	// AckTimeout bounds the wait for a batch's acknowledgements (default 5s).
	AckTimeout time.Duration
	Logger     *slog.Logger
}

// DefaultUsageLinger is UsageOptions.Linger's default.
const DefaultUsageLinger = 20 * time.Millisecond

// UsageStats counts a publisher's events.
type UsageStats struct {
	Published uint64 // acknowledged by the USAGE stream
	Shed      uint64 // refused because the buffer was full
	Failed    uint64 // publish failed or was not acknowledged
	Buffered  int    // waiting now
	Messages  uint64 // USAGE messages acknowledged (each a batch of events)
	Retried   uint64 // batches published again after a failure
}

// UsagePublisher publishes KeyUsed events to USAGE off the request path:
// Record only copies the event into a buffered channel, and a goroutine
// packs what has accumulated into one message per environment (see
// events.AppendUsage), so the stream stores one message per batch rather
// than one per verification.
type UsagePublisher struct {
	js     jetstream.JetStream
	opts   UsageOptions
	ch     chan events.KeyUsed
	closed atomic.Bool

	published, shed, failed, messages, retried atomic.Uint64

	// bufs holds each environment's batch; reused while acknowledgements
	// come back in time.
	bufs [3]usageBuf

	startOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
}

// usageBuf is one environment's batch being built.
type usageBuf struct {
	data []byte
	n    int
	node string
}

// NewUsagePublisher returns a publisher to js. Call Start.
func NewUsagePublisher(js jetstream.JetStream, opts UsageOptions) *UsagePublisher {
	if opts.Buffer <= 0 {
		opts.Buffer = 1 << 16
	}
	if opts.Batch <= 0 {
		opts.Batch = 1024
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 10
	}
	if opts.Linger == 0 {
		opts.Linger = DefaultUsageLinger
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &UsagePublisher{js: js, opts: opts, ch: make(chan events.KeyUsed, opts.Buffer), done: make(chan struct{})}
}

// Record queues ev without blocking. A full buffer sheds the event and
// counts it (see Stats).
func (u *UsagePublisher) Record(ev events.KeyUsed) {
	if u.closed.Load() {
		u.shed.Add(1)
		return
	}
	select {
	case u.ch <- ev:
	default:
		u.shed.Add(1)
	}
}

// Stats returns the publisher's counters.
func (u *UsagePublisher) Stats() UsageStats {
	return UsageStats{Published: u.published.Load(), Shed: u.shed.Load(), Failed: u.failed.Load(),
		Buffered: len(u.ch), Messages: u.messages.Load(), Retried: u.retried.Load()}
}

// Start runs the publishing goroutine until Close.
func (u *UsagePublisher) Start(ctx context.Context) {
	u.startOnce.Do(func() {
		ctx, u.cancel = context.WithCancel(context.WithoutCancel(ctx))
		go u.run(ctx)
	})
}

// Close stops taking events, publishes what is buffered and waits for its
// acknowledgements, or until ctx ends.
func (u *UsagePublisher) Close(ctx context.Context) error {
	u.closed.Store(true)
	if u.cancel == nil {
		return nil
	}
	u.cancel()
	select {
	case <-u.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (u *UsagePublisher) run(ctx context.Context) {
	defer close(u.done)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	for {
		select {
		case ev := <-u.ch:
			u.add(&ev)
			u.collect(ctx, linger)
			u.flush()
		case <-ctx.Done():
			// Publish what Record accepted before Close, then stop.
			for len(u.ch) > 0 {
				u.collect(ctx, nil)
				u.flush()
			}
			return
		}
	}
}

// collect adds buffered events to the batches until one is full. When
// linger is not nil and the batches are not full yet, it then waits the
// linger time and takes what arrived meanwhile. It sleeps on the timer
// rather than on the channel: waking up for every event would cost a
// goroutine switch per verification.
func (u *UsagePublisher) collect(ctx context.Context, linger *time.Timer) {
	u.drain()
	if linger == nil || u.opts.Linger <= 0 || u.full() {
		return
	}
	linger.Reset(u.opts.Linger)
	select {
	case <-linger.C:
	case <-ctx.Done():
		linger.Stop()
	}
	u.drain()
}

// drain adds buffered events to the batches, without waiting, until one
// is full or none is left.
func (u *UsagePublisher) drain() {
	for !u.full() {
		select {
		case ev := <-u.ch:
			u.add(&ev)
		default:
			return
		}
	}
}

// add encodes ev into its environment's batch.
func (u *UsagePublisher) add(ev *events.KeyUsed) {
	if ev.EventID == "" {
		ev.EventID = events.NewID()
	}
	ev.Clip()
	b := &u.bufs[envIndex(ev.Environment)]
	if b.n == 0 {
		b.node = ev.Node
	}
	b.data = events.AppendUsage(b.data, ev)
	b.n++
}

func envIndex(env keyledger.Environment) int {
	if int(env) < 3 {
		return int(env)
	}
	return 0
}

func (u *UsagePublisher) full() bool {
	for i := range u.bufs {
		if b := &u.bufs[i]; b.n >= u.opts.Batch || len(b.data) >= u.opts.MaxBytes {
			return true
		}
	}
	return false
}

// flush publishes each non-empty batch as one message and waits for the
// acknowledgements, so one round is in flight at a time and the buffer
// absorbs bursts meanwhile.
func (u *UsagePublisher) flush() {
	var (
		futures [3]jetstream.PubAckFuture
		counts  [3]int
		ids     [3]string
		retry   [3][]byte
	)
	for i := range u.bufs {
		b := &u.bufs[i]
		if b.n == 0 {
			continue
		}
		counts[i] = b.n
		// One id per batch, for every attempt: a retry of a batch that
		// did land is dropped by the stream's duplicate window.
		ids[i] = events.NewID()
		f, err := u.js.PublishAsync(UsageBatchSubject(keyledger.Environment(i), b.node), b.data, jetstream.WithMsgID(ids[i]))
		if err != nil {
			// The client may still hold the bytes: start a new buffer.
			retry[i], b.data, b.n = b.data, nil, 0
			continue
		}
		futures[i] = f
	}
	timeout := time.NewTimer(u.opts.AckTimeout)
	defer timeout.Stop()
	timedOut := false
	for i, f := range futures {
		if f == nil {
			continue
		}
		b := &u.bufs[i]
		if timedOut {
			retry[i], b.data, b.n = b.data, nil, 0
			continue
		}
		select {
		case <-f.Ok():
			u.published.Add(uint64(counts[i]))
			u.messages.Add(1)
			b.data, b.n = b.data[:0], 0
		case err := <-f.Err():
			u.opts.Logger.Debug("usage: batch not stored; retrying", "events", counts[i], "err", err)
			retry[i], b.data, b.n = b.data, nil, 0
		case <-timeout.C:
			timedOut = true
			// A late retry may still send these bytes: never reuse them.
			retry[i], b.data, b.n = b.data, nil, 0
		}
	}
	for i, data := range retry {
		if data != nil {
			u.retryBatch(UsageBatchSubject(keyledger.Environment(i), u.bufs[i].node), data, ids[i], counts[i])
		}
	}
}

// retryBatch publishes a failed batch again, synchronously, a few times
// within AckTimeout, before counting its events as failed. Events keep
// queueing meanwhile (and are shed, counted, if the queue fills).
func (u *UsagePublisher) retryBatch(subject string, data []byte, id string, n int) {
	deadline := time.Now().Add(u.opts.AckTimeout)
	wait := 100 * time.Millisecond
	var err error
	for attempt := 0; attempt < 4 && time.Now().Before(deadline); attempt++ {
		u.retried.Add(1)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		_, err = u.js.Publish(ctx, subject, data, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			u.published.Add(uint64(n))
			u.messages.Add(1)
			return
		}
		select {
		case <-time.After(wait):
		case <-time.After(time.Until(deadline)):
		}
		wait *= 2
	}
	u.failed.Add(uint64(n))
	u.opts.Logger.Warn("usage: batch not stored after retries", "events", n, "err", err)
}
