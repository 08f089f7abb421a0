package verifier

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyledger/keyledger/events"
	"github.com/nats-io/nats.go/jetstream"
)

// UsageOptions configure a UsagePublisher.
type UsageOptions struct {
	// Buffer is how many events may wait for publishing (default 65536).
	// When it is full, events are shed and counted, never blocking a
	// request.
	Buffer int
	// Batch is how many events are published before waiting for their
	// acknowledgements (default 1024).
	Batch int
	// AckTimeout bounds the wait for a batch's acknowledgements (default 5s).
	AckTimeout time.Duration
	Logger     *slog.Logger
}

// UsageStats counts a publisher's events.
type UsageStats struct {
	Published uint64 // acknowledged by the USAGE stream
	Shed      uint64 // refused because the buffer was full
	Failed    uint64 // publish failed or was not acknowledged
	Buffered  int    // waiting now
}

// UsagePublisher publishes KeyUsed events to USAGE in batches, off the
// request path: Record only copies the event into a buffered channel.
type UsagePublisher struct {
	js     jetstream.JetStream
	opts   UsageOptions
	ch     chan events.KeyUsed
	closed atomic.Bool

	published, shed, failed atomic.Uint64

	startOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
}

// NewUsagePublisher returns a publisher to js. Call Start.
func NewUsagePublisher(js jetstream.JetStream, opts UsageOptions) *UsagePublisher {
	if opts.Buffer <= 0 {
		opts.Buffer = 1 << 16
	}
	if opts.Batch <= 0 {
		opts.Batch = 1024
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
	return UsageStats{Published: u.published.Load(), Shed: u.shed.Load(), Failed: u.failed.Load(), Buffered: len(u.ch)}
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
	batch := make([]events.KeyUsed, 0, u.opts.Batch)
	for {
		select {
		case ev := <-u.ch:
			u.publish(u.fill(append(batch[:0], ev)))
		case <-ctx.Done():
			// Publish what Record accepted before Close, then stop.
			for {
				b := u.fill(batch[:0])
				if len(b) == 0 {
					return
				}
				u.publish(b)
			}
		}
	}
}

// fill appends buffered events to batch up to its capacity, without waiting.
func (u *UsagePublisher) fill(batch []events.KeyUsed) []events.KeyUsed {
	for len(batch) < cap(batch) {
		select {
		case ev := <-u.ch:
			batch = append(batch, ev)
		default:
			return batch
		}
	}
	return batch
}

// publish sends a batch asynchronously and waits for the acknowledgements,
// so at most one batch is in flight and the buffer absorbs bursts.
func (u *UsagePublisher) publish(batch []events.KeyUsed) {
	futures := make([]jetstream.PubAckFuture, 0, len(batch))
	for i := range batch {
		ev := &batch[i]
		if ev.EventID == "" {
			ev.EventID = events.NewID()
		}
		data := ev.AppendJSON(make([]byte, 0, 384))
		f, err := u.js.PublishAsync(events.UsageSubject(ev.Environment, ev.KeyID), data)
		if err != nil {
			u.failed.Add(1)
			continue
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(u.opts.AckTimeout)
	defer timeout.Stop()
	var failed uint64
	for i, f := range futures {
		select {
		case <-f.Ok():
			u.published.Add(1)
		case <-f.Err():
			failed++
		case <-timeout.C:
			failed += uint64(len(futures) - i)
			u.failed.Add(failed)
			u.opts.Logger.Warn("usage: acknowledgements timed out", "lost", failed)
			return
		}
	}
	if failed > 0 {
		u.failed.Add(failed)
		u.opts.Logger.Warn("usage: events not stored", "count", failed)
	}
}
