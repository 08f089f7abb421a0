package nats

import (
	"context"
	"errors"

	keyledger "github.com/keyledger/keyledger"
	"github.com/nats-io/nats.go/jetstream"
)

// ReadRange calls fn with the stored messages of stream from sequence
// from to sequence to, in order, read with an ordered consumer (one
// request per 1024 messages, not one per message). A sequence the stream
// no longer holds is skipped: fn sees the gap in the sequences it gets.
// It returns fn's first error, or an unavailable error when ctx ends
// first.
func ReadRange(ctx context.Context, stream jetstream.Stream, from, to uint64, fn func(seq uint64, subject string, data []byte) error) error {
	if from > to {
		return nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
	})
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read the stream")
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1024))
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read the stream")
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for next := from; next <= to; {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return keyledger.Wrap(keyledger.Unavailable, errors.Join(ctx.Err(), err), "reading the stream was interrupted")
			}
			continue
		}
		meta, err := msg.Metadata()
		if err != nil {
			continue
		}
		seq := meta.Sequence.Stream
		if seq < next {
			continue
		}
		if err := fn(seq, msg.Subject(), msg.Data()); err != nil {
			return err
		}
		next = seq + 1
	}
	return nil
}
