package nats

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
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
	// AlertsStream holds alert notices (AlertSubjectPrefix + rule) for a
	// while: the stream's Nats-Msg-Id window makes a notice that two
	// analytics nodes publish one, and its durable consumer delivers each
	// notice to the webhook once, from whichever analytics node fetches it.
	AlertsStream = "ALERTS"
	// AlertsDuplicates is ALERTS' dedup window: longer than any gap
	// between two analytics nodes' detection runs.
	AlertsDuplicates = 15 * time.Minute
	// AuditStream holds the ledger's signed checkpoints and every node's
	// cosignatures of them, forever: what lets anyone holding an old
	// checkpoint prove the ledger only grew since.
	AuditStream = "AUDIT"
	// CheckpointSubject carries checkpoints, published by admin nodes.
	CheckpointSubject = "keyledger.audit.checkpoint"
	// CosignSubjectPrefix + node name carries that node's cosignatures
	// (or, for a checkpoint it disagrees with, its own checkpoint of the
	// same size).
	CosignSubjectPrefix = "keyledger.audit.cosign."
)

// KeySubject returns the subject of a key's lifecycle events.
func KeySubject(keyID string) string { return KeysSubjectPrefix + keyID }

// IsKeySubject reports whether subject is KeySubject(keyID), without
// making the subject (the projector asks it of every event it replays).
func IsKeySubject(subject, keyID string) bool {
	id, ok := strings.CutPrefix(subject, KeysSubjectPrefix)
	return ok && id == keyID
}

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
	// Logger hears, every 10 s at most, why EnsureStreams is still
	// waiting: start-up must not hang silently.
	Logger *slog.Logger
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
		Description: "keyledger events.KeyUsed events",
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

// AlertsStreamConfig returns the configuration of ALERTS: notices kept 30
// days (at most 256 MiB, or a 16th of what USAGE may hold when that is
// less, oldest dropped), deduplicated by Nats-Msg-Id over
// AlertsDuplicates.
func AlertsStreamConfig(c StreamConfig) jetstream.StreamConfig {
	c = c.withDefaults()
	return jetstream.StreamConfig{
		Name:        AlertsStream,
		Description: "keyledger alert notices (firing, updated, resolved)",
		Subjects:    []string{AlertSubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      30 * 24 * time.Hour,
		MaxBytes:    alertsMaxBytes(c.UsageMaxBytes),
		MaxMsgs:     -1,
		Discard:     jetstream.DiscardOld,
		Duplicates:  AlertsDuplicates,
		Replicas:    c.Replicas,
	}
}

// alertsMaxBytes: JetStream reserves a stream's MaxBytes on disk at
// start, so ALERTS stays small beside a small USAGE.
func alertsMaxBytes(usage int64) int64 {
	if usage <= 0 {
		return 256 << 20
	}
	return min(256<<20, max(1<<20, usage/16))
}

// AuditStreamConfig returns the configuration of AUDIT: like KEYS, no
// limits, deletes and purges denied, never updated by a node.
func AuditStreamConfig(c StreamConfig) jetstream.StreamConfig {
	cfg := KeysStreamConfig(c)
	cfg.Name = AuditStream
	cfg.Description = "keyledger signed checkpoints of KEYS and their cosignatures"
	cfg.Subjects = []string{CheckpointSubject, CosignSubjectPrefix + "*"}
	return cfg
}

// EnsureStreams creates the streams when missing and brings USAGE to c;
// an existing KEYS is left as it is (see KeysStreamConfig). It is
// idempotent, so every admin node calls it at start. In a cluster that is still electing its
// JetStream meta leader it retries until ctx ends.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, c StreamConfig) error {
	c = c.withDefaults()
	start := time.Now()
	var lastLog time.Time
	for _, cfg := range []jetstream.StreamConfig{KeysStreamConfig(c), UsageStreamConfig(c), AlertsStreamConfig(c), AuditStreamConfig(c), CountersStreamConfig(c), SnapshotsStreamConfig(c)} {
		for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
			// Each attempt gets its own deadline: a request sent before
			// the cluster has a meta leader gets no answer at all.
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			s, err := js.Stream(actx, cfg.Name)
			if err == nil && (cfg.Name == KeysStream || cfg.Name == AuditStream) {
				// KEYS exists: no node changes it. Only the operator
				// may update the ledger's stream (an update is how its
				// history would be cut), and the admin role is refused
				// STREAM.UPDATE.KEYS by the server. AUDIT likewise.
				cancel()
				break
			}
			if err == nil {
				old := s.CachedInfo().Config
				// The persist mode of a stream cannot change; keep the
				// existing one rather than refuse to start.
				cfg.PersistMode = old.PersistMode
				// Never lower replication from a node's start-up flags:
				// one node started with the default --replicas 1 must
				// not strip a cluster's ledger down to one copy.
				cfg.Replicas = max(cfg.Replicas, old.Replicas)
			}
			switch {
			case errors.Is(err, jetstream.ErrStreamNotFound):
				_, err = js.CreateStream(actx, cfg)
			case err == nil:
				_, err = js.UpdateStream(actx, cfg)
			}
			cancel()
			if err == nil {
				break
			}
			var apiErr *jetstream.APIError
			// A configuration the server refuses is final; a cluster
			// without quorum, peers or a leader yet (503s, no peers
			// 10005, insufficient resources 10023) is worth waiting for.
			// Another admin node created it first: look again.
			raced := errors.Is(err, jetstream.ErrStreamNameAlreadyInUse)
			if !raced && errors.As(err, &apiErr) && apiErr.Code == 400 && apiErr.ErrorCode != 10005 && apiErr.ErrorCode != 10023 {
				return keyledger.Wrap(keyledger.Invalid, err, fmt.Sprintf("cannot create stream %s: %s", cfg.Name, apiErr.Description))
			}
			// Insufficient resources that last: on a single server it
			// is the disk (USAGE reserves UsageMaxBytes), not a peer
			// still starting. Say so rather than wait forever.
			if errors.As(err, &apiErr) && apiErr.ErrorCode == 10023 && time.Since(start) > 30*time.Second {
				return keyledger.Wrap(keyledger.Unavailable, err, fmt.Sprintf(
					"cannot create stream %s: JetStream has not the storage it reserves (%d bytes for USAGE: see --usage-max-bytes; free disk space)",
					cfg.Name, c.UsageMaxBytes))
			}
			if c.Logger != nil && time.Since(lastLog) >= 10*time.Second {
				lastLog = time.Now()
				c.Logger.Warn("waiting for JetStream to create the streams", "stream", cfg.Name, "err", err,
					"waited", time.Since(start).Round(time.Second))
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
