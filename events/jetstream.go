package events

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Stream and subject names.
const (
	// KeysStream holds every key lifecycle event, forever, one subject per key.
	KeysStream = "KEYS"
	// KeysSubjectPrefix + key id is the subject of a key's events.
	KeysSubjectPrefix = "keyledger.keys."
	// UsageStream holds KeyUsed events until analytics has them.
	UsageStream = "USAGE"
	// UsageSubjectPrefix + "<environment>.<key id or unknown>" is the subject
	// of a single KeyUsed event; UsageSubjectPrefix +
	// "<environment>.batch.<node>" that of a batch (see UsageBatchSubject).
	UsageSubjectPrefix = "keyledger.usage."
)

// KeySubject returns the subject of a key's lifecycle events.
func KeySubject(keyID string) string { return KeysSubjectPrefix + keyID }

// UsageSubject returns the subject of a KeyUsed event.
func UsageSubject(env keyledger.Environment, keyID string) string {
	if keyID == "" {
		keyID = "unknown"
	}
	return UsageSubjectPrefix + env.String() + "." + keyID
}

// UsageBatchSubject returns the subject of a batch of KeyUsed events of one
// environment published by one node. Verifier nodes publish batches: one
// stored message per verification would cost the stream more than the
// verification itself. Characters that NATS gives a meaning to in subjects
// are replaced in the node's name.
func UsageBatchSubject(env keyledger.Environment, node string) string {
	if node == "" {
		node = "unnamed"
	}
	b := make([]byte, 0, len(UsageSubjectPrefix)+len("live.batch.")+len(node))
	b = append(b, UsageSubjectPrefix...)
	b = append(b, env.String()...)
	b = append(b, ".batch."...)
	for i := 0; i < len(node); i++ {
		c := node[i]
		if c <= ' ' || c == '.' || c == '*' || c == '>' || c >= 0x7f {
			c = '_'
		}
		b = append(b, c)
	}
	return string(b)
}

// StreamConfig sizes the two streams.
type StreamConfig struct {
	// Replicas of each stream: 1 on one machine, 3 in a cluster.
	Replicas int
	// Duplicates is the KEYS dedup window for Nats-Msg-Id (≥ 2 min).
	Duplicates time.Duration
	// UsageMaxAge and UsageMaxBytes bound USAGE (0 = defaults: 7 days, 10 GiB).
	UsageMaxAge   time.Duration
	UsageMaxBytes int64
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Replicas < 1 {
		c.Replicas = 1
	}
	if c.Duplicates < 2*time.Minute {
		c.Duplicates = 2 * time.Minute
	}
	if c.UsageMaxAge <= 0 {
		c.UsageMaxAge = 7 * 24 * time.Hour
	}
	if c.UsageMaxBytes == 0 {
		c.UsageMaxBytes = 10 << 30
	}
	return c
}

// KeysStreamConfig returns the configuration of KEYS. The stream is the
// ledger itself: no limits, and deletes and purges denied so history cannot
// be rewritten through the API.
func KeysStreamConfig(c StreamConfig) jetstream.StreamConfig {
	c = c.withDefaults()
	return jetstream.StreamConfig{
		Name:        KeysStream,
		Description: "keyledger key lifecycle events (the ledger)",
		Subjects:    []string{KeysSubjectPrefix + "*"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxMsgs:     -1,
		MaxBytes:    -1,
		MaxAge:      0,
		Duplicates:  c.Duplicates,
		Replicas:    c.Replicas,
		DenyDelete:  true,
		DenyPurge:   true,
	}
}

// UsageStreamConfig returns the configuration of USAGE: a buffer between
// verifiers and analytics, bounded by age and size, oldest dropped first. A
// single-replica USAGE flushes asynchronously even when the server syncs
// every write: losing the last usage events in a power failure is an
// acceptable price for not paying an fsync per verification. Replicated
// streams are backed by a synced Raft log instead.
func UsageStreamConfig(c StreamConfig) jetstream.StreamConfig {
	c = c.withDefaults()
	persist := jetstream.DefaultPersistMode
	if c.Replicas == 1 {
		persist = jetstream.AsyncPersistMode
	}
	return jetstream.StreamConfig{
		PersistMode: persist,
		Name:        UsageStream,
		Description: "keyledger KeyUsed events",
		Subjects:    []string{UsageSubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      c.UsageMaxAge,
		MaxBytes:    c.UsageMaxBytes,
		MaxMsgs:     -1,
		Discard:     jetstream.DiscardOld,
		Duplicates:  2 * time.Minute,
		Replicas:    c.Replicas,
	}
}

// EnsureStreams creates or updates both streams. It is idempotent, so every
// node may call it at start. In a cluster that is still electing its
// JetStream meta leader it retries until ctx ends.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, c StreamConfig) error {
	for _, cfg := range []jetstream.StreamConfig{KeysStreamConfig(c), UsageStreamConfig(c)} {
		for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
			// Each attempt gets its own deadline: a request sent before
			// the cluster has a meta leader gets no answer at all.
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			if s, err := js.Stream(actx, cfg.Name); err == nil {
				old := s.CachedInfo().Config
				// The persist mode of a stream cannot change; keep the
				// existing one rather than refuse to start.
				cfg.PersistMode = old.PersistMode
				// Never lower replication from a node's start-up flags:
				// one node started with the default --replicas 1 must
				// not strip a cluster's ledger down to one copy.
				cfg.Replicas = max(cfg.Replicas, old.Replicas)
			}
			_, err := js.CreateOrUpdateStream(actx, cfg)
			cancel()
			if err == nil {
				break
			}
			var apiErr *jetstream.APIError
			// A configuration the server refuses is final; a cluster
			// without quorum, peers or a leader yet (503s, no peers
			// 10005, insufficient resources 10023) is worth waiting for.
			if errors.As(err, &apiErr) && apiErr.Code == 400 && apiErr.ErrorCode != 10005 && apiErr.ErrorCode != 10023 {
				return keyledger.Wrap(keyledger.Invalid, err, fmt.Sprintf("cannot create stream %s: %s", cfg.Name, apiErr.Description))
			}
			select {
			case <-ctx.Done():
				return keyledger.Wrap(keyledger.Unavailable, err, fmt.Sprintf("cannot create stream %s (no JetStream quorum?)", cfg.Name))
			case <-time.After(wait):
			}
		}
	}
	return nil
}

// WaitStreams waits until both streams exist, without creating or changing
// them: what nodes that do not own the streams (verifiers) do at start.
func WaitStreams(ctx context.Context, js jetstream.JetStream) error {
	for _, name := range []string{KeysStream, UsageStream} {
		for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := js.Stream(actx, name)
			cancel()
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return keyledger.Wrap(keyledger.Unavailable, err, fmt.Sprintf("stream %s is not available (are the admin nodes up?)", name))
			case <-time.After(wait):
			}
		}
	}
	return nil
}

// Record is an event with its position in the KEYS stream.
type Record struct {
	Seq   uint64
	Event Event
}

// Log is the KEYS stream seen as a ledger: append with optimistic
// concurrency, read a key's last event or whole history.
type Log struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	// retries of an append whose outcome is unknown (timeout, no responders).
	retries int
	backoff time.Duration
}

// OpenLog returns the ledger on an existing KEYS stream.
func OpenLog(ctx context.Context, js jetstream.JetStream) (*Log, error) {
	s, err := js.Stream(ctx, KeysStream)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "KEYS stream is not available")
	}
	return &Log{js: js, stream: s, retries: 5, backoff: 50 * time.Millisecond}, nil
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
func (l *Log) Append(ctx context.Context, ev Event, expect uint64) (uint64, error) {
	h := ev.Head()
	data, err := Encode(ev)
	if err != nil {
		return 0, err
	}
	subj := KeySubject(h.KeyID)
	wait := l.backoff
	for attempt := 0; ; attempt++ {
		ack, err := l.js.Publish(ctx, subj, data,
			jetstream.WithMsgID(h.EventID),
			jetstream.WithExpectStream(KeysStream),
			jetstream.WithExpectLastSequencePerSubject(expect))
		if err == nil && !ack.Duplicate {
			return ack.Sequence, nil
		}
		if err == nil || isWrongLastSequence(err) {
			// A duplicate ack, or a conflict, may be our own earlier
			// attempt — or another event that reused this event_id.
			// Only the very same bytes on the same subject count as ours.
			if seq, ok := l.landed(ctx, subj, data, h.EventID); ok {
				return seq, nil
			}
			return 0, ErrConflict
		}
		if ctx.Err() != nil || attempt >= l.retries || !retryable(err) {
			return 0, keyledger.Wrap(keyledger.Unavailable, err, "the ledger did not accept the event")
		}
		select {
		case <-ctx.Done():
			return 0, keyledger.Wrap(keyledger.Unavailable, ctx.Err(), "the ledger did not accept the event")
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// landed reports whether the subject's last message is exactly this event:
// same Msg-Id and same bytes.
func (l *Log) landed(ctx context.Context, subj string, data []byte, eventID string) (uint64, bool) {
	m, err := l.stream.GetLastMsgForSubject(ctx, subj)
	if err != nil {
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

// retryable reports whether an append may have failed without an answer
// from the stream, so trying again (same Msg-Id) is safe and useful.
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return false // the stream answered; trying again changes nothing
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, nats.ErrDisconnected)
}

// Last returns the last event of a key and its sequence, or a NotFound error.
func (l *Log) Last(ctx context.Context, keyID string) (Record, error) {
	if err := ValidKeyID(keyID); err != nil {
		return Record{}, keyledger.Errorf(keyledger.NotFound, "no key %q", keyID)
	}
	m, err := l.stream.GetLastMsgForSubject(ctx, KeySubject(keyID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Record{}, keyledger.Errorf(keyledger.NotFound, "no key %q", keyID)
	}
	if err != nil {
		return Record{}, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the ledger")
	}
	ev, err := Decode(m.Data)
	if err != nil {
		return Record{}, keyledger.Wrap(keyledger.Internal, err, "undecodable event in the ledger")
	}
	return Record{Seq: m.Sequence, Event: ev}, nil
}

// History returns every event of a key in stream order: its audit trail.
func (l *Log) History(ctx context.Context, keyID string) ([]Record, error) {
	if err := ValidKeyID(keyID); err != nil {
		return nil, keyledger.Errorf(keyledger.NotFound, "no key %q", keyID)
	}
	subj := KeySubject(keyID)
	var out []Record
	for seq := uint64(1); ; {
		m, err := l.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the ledger")
		}
		ev, err := Decode(m.Data)
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "undecodable event in the ledger")
		}
		out = append(out, Record{Seq: m.Sequence, Event: ev})
		seq = m.Sequence + 1
	}
	if len(out) == 0 {
		return nil, keyledger.Errorf(keyledger.NotFound, "no key %q", keyID)
	}
	return out, nil
}
