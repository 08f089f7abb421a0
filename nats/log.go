package nats

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Record is an event with its position in the KEYS stream.
type Record struct {
	Seq   uint64
	Event events.Event
	// Signer names the key that signed the event ("" for an unsigned
	// event adopted with Keyring.TrustUnsignedThrough).
	Signer string
	// Rejected, when not "", is why no node applies this event
	// (events.RejectReason): it is in the stream but not in the ledger.
	// History returns such events so that an audit sees them; Last
	// skips none, since the sequence still orders writes.
	Rejected string
	// Data is the event exactly as the stream stores it, signature
	// included: its Merkle leaf.
	Data []byte
}

// Log is the KEYS stream seen as a ledger: append with optimistic
// concurrency, read a key's last event or whole history.
type Log struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	signer *events.Signer
	ring   *events.Keyring
	// WriteTimeout bounds how long an append, or a read of the ledger,
	// keeps retrying while the stream has no leader (an election takes
	// seconds; see DefaultWriteTimeout). Set it before use.
	WriteTimeout time.Duration
	// Storage, if set, says why the local store cannot take an append
	// now (Server.StorageError): an append then fails at once with it,
	// instead of retrying an append no retry can land.
	Storage func() error
	backoff time.Duration
	retried atomic.Uint64
}

// Retried counts the attempts that failed for want of a leader and were
// tried again.
func (l *Log) Retried() uint64 { return l.retried.Load() }

// DefaultWriteTimeout is how long a write or a ledger read rides through a
// leader election before it gives up: elections after a leader's death
// took 4–15 s in fault runs on one machine, so twice that.
const DefaultWriteTimeout = 30 * time.Second

// attemptTimeout bounds one request to the stream: one sent before a new
// leader exists may never be answered, and must not eat the whole budget.
const attemptTimeout = 2 * time.Second

// OpenLog returns the ledger on an existing KEYS stream. Appends are
// signed by signer; reads are checked against ring.
func OpenLog(ctx context.Context, js jetstream.JetStream, signer *events.Signer, ring *events.Keyring) (*Log, error) {
	if signer == nil || ring == nil {
		return nil, keyledger.Errorf(keyledger.Internal, "the ledger needs a signing key and a keyring")
	}
	s, err := js.Stream(ctx, KeysStream)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "KEYS stream is not available")
	}
	return &Log{js: js, stream: s, signer: signer, ring: ring, WriteTimeout: DefaultWriteTimeout, backoff: 50 * time.Millisecond}, nil
}

// ErrConflict is returned by Append when the key's subject has moved past
// the expected sequence: somebody else wrote first.
var ErrConflict = &keyledger.Error{Code: keyledger.Conflict, Message: "the key was changed concurrently"}

// Append publishes ev to its key's subject if, and only if, the subject's
// last sequence is expect (0: the subject is empty, i.e. create). It returns
// the event's stream sequence.
//
// An append whose outcome is unknown (timeout, lost connection) is retried
// with the same Nats-Msg-Id. A standalone server checks the expected
// sequence before the dedup id, so the retry of a write that did land
// answers "wrong last sequence"; Append then reads the subject's last
// message and, if it is this very event, reports success.
func (l *Log) Append(ctx context.Context, ev events.Event, expect uint64) (uint64, error) {
	h := ev.Head()
	data, err := events.Encode(ev)
	if err != nil {
		return 0, err
	}
	if data, err = l.signer.Seal(data); err != nil {
		return 0, err
	}
	subj := KeySubject(h.KeyID)
	var seq uint64
	err = l.retry(ctx, func(ctx context.Context) error {
		if l.Storage != nil {
			if err := l.Storage(); err != nil {
				return err
			}
		}
		ack, err := l.js.Publish(ctx, subj, data,
			jetstream.WithMsgID(h.EventID),
			jetstream.WithExpectStream(KeysStream),
			jetstream.WithExpectLastSequencePerSubject(expect))
		if err == nil && !ack.Duplicate {
			seq = ack.Sequence
			return nil
		}
		if err == nil || isWrongLastSequence(err) {
			// A duplicate ack, or a conflict, may be our own earlier
			// attempt — or another event that reused this event_id.
			// Only the very same bytes on the same subject count as ours.
			var ok bool
			if seq, ok = l.landed(ctx, subj, data, h.EventID); ok {
				return nil
			}
			return ErrConflict
		}
		return err
	})
	if errors.Is(err, ErrConflict) {
		return 0, ErrConflict
	}
	if l.Storage != nil && l.Storage() != nil {
		return 0, l.Storage()
	}
	if err != nil {
		return 0, keyledger.Wrap(keyledger.Unavailable, err, "the ledger did not accept the event")
	}
	return seq, nil
}

// retry runs op until it succeeds, fails for good, or WriteTimeout (or
// ctx) ends: an error that may mean "no leader yet" is tried again, each
// attempt with its own short deadline, with a growing pause between.
// Every attempt of an append carries the same event id, so a retry can
// never write it twice.
func (l *Log) retry(ctx context.Context, op func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, l.WriteTimeout)
	defer cancel()
	wait := l.backoff
	for {
		actx, acancel := context.WithTimeout(ctx, attemptTimeout)
		err := op(actx)
		acancel()
		if err == nil || !retryable(err) {
			return err
		}
		l.retried.Add(1)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (still failing after %v: %w)", err, l.WriteTimeout, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// landed reports whether the subject's last message is exactly this event:
// same Msg-Id and same bytes.
func (l *Log) landed(ctx context.Context, subj string, data []byte, eventID string) (uint64, bool) {
	m, err := l.stream.GetLastMsgForSubject(ctx, subj)
	if err != nil {
		// Unknown: the caller's retry asks again, same Msg-Id.
		return 0, false
	}
	if m.Header.Get(jetstream.MsgIDHeader) == eventID && bytes.Equal(m.Data, data) {
		return m.Sequence, true
	}
	return 0, false
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// retryable reports whether a request to the stream may have failed only
// for want of a leader, so trying again (same Msg-Id) is safe and useful:
// no answer at all, or the stream answering that it cannot serve now.
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503: JetStream or the stream is not available (no leader,
		// no quorum); any other answer is final.
		return apiErr.Code == 503
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, natsgo.ErrTimeout) ||
		errors.Is(err, natsgo.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, natsgo.ErrConnectionClosed) || errors.Is(err, natsgo.ErrConnectionReconnecting) ||
		errors.Is(err, natsgo.ErrDisconnected) || errors.Is(err, jetstream.ErrJetStreamNotEnabled)
}

// LastSeq returns the stream's last sequence: every event acknowledged
// before the call is at or below it.
func (l *Log) LastSeq(ctx context.Context) (uint64, error) {
	var seq uint64
	err := l.retry(ctx, func(ctx context.Context) error {
		info, err := l.stream.Info(ctx)
		if err != nil {
			return err
		}
		if info.Cluster != nil && info.Cluster.Leader == "" {
			// A replica without a leader may not know the latest writes.
			return jetstream.ErrNoStreamResponse
		}
		seq = info.State.LastSeq
		return nil
	})
	if err != nil {
		return 0, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the ledger")
	}
	return seq, nil
}

// Last returns the last event of a key and its sequence, or a NotFound error.
func (l *Log) Last(ctx context.Context, keyID string) (Record, error) {
	if err := events.ValidKeyID(keyID); err != nil {
		return Record{}, keyledger.Errorf(keyledger.NotFound, "no key %q", keyID)
	}
	var m *jetstream.RawStreamMsg
	err := l.retry(ctx, func(ctx context.Context) (err error) {
		m, err = l.stream.GetLastMsgForSubject(ctx, KeySubject(keyID))
		return err
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Record{}, keyledger.Errorf(keyledger.NotFound, "no key %q", keyID)
	}
	if err != nil {
		return Record{}, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the ledger")
	}
	return l.record(keyID, m)
}

// record opens a stored event: checked against the keyring and its
// subject, decoded whether or not it passed, so that a forgery can be
// shown for what it is.
func (l *Log) record(keyID string, m *jetstream.RawStreamMsg) (Record, error) {
	r := Record{Seq: m.Sequence, Data: m.Data}
	data, signer, err := l.ring.Open(m.Data, m.Sequence)
	if err != nil {
		r.Rejected = events.RejectReason(err)
		data = events.Unseal(m.Data)
	}
	r.Signer = signer
	ev, derr := events.Decode(data)
	if derr != nil {
		if r.Rejected != "" {
			// A forgery that does not even decode: nothing to show
			// but that it is there.
			return Record{}, keyledger.Errorf(keyledger.Internal, "undecodable, rejected event at sequence %d (%s)", m.Sequence, r.Rejected)
		}
		return Record{}, keyledger.Wrap(keyledger.Internal, derr, "undecodable event in the ledger")
	}
	if r.Rejected == "" && ev.Head().KeyID != keyID {
		r.Rejected = events.RejectReason(events.ErrSubjectMismatch)
	}
	r.Event = ev
	return r, nil
}

// History returns every event of a key in stream order: its audit trail.
func (l *Log) History(ctx context.Context, keyID string) ([]Record, error) {
	if err := events.ValidKeyID(keyID); err != nil {
		return nil, keyledger.Errorf(keyledger.NotFound, "no key %q", keyID)
	}
	subj := KeySubject(keyID)
	var out []Record
	for seq := uint64(1); ; {
		var m *jetstream.RawStreamMsg
		err := l.retry(ctx, func(ctx context.Context) (err error) {
			m, err = l.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
			return err
		})
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the ledger")
		}
		r, err := l.record(keyID, m)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
		seq = m.Sequence + 1
	}
	if len(out) == 0 {
		return nil, keyledger.Errorf(keyledger.NotFound, "no key %q", keyID)
	}
	return out, nil
}
