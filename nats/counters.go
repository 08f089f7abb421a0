package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/quota"
	"github.com/nats-io/nats.go/jetstream"
)

// CountersBucket is the JetStream KV bucket of the fleet's quota counters
// (see package quota): one entry per owner's quota, key's credits and
// fleet-wide rate, each the units drawn in its current period.
const CountersBucket = "COUNTERS"

// CountersStream is the stream behind CountersBucket.
const CountersStream = "KV_" + CountersBucket

// countersPrefix is the subject prefix of the bucket's entries.
const countersPrefix = "$KV." + CountersBucket + "."

// CountersStreamConfig is the bucket's stream, as nats.go's
// CreateKeyValue makes a bucket (so that KeyValue binds it): one value
// per counter, deletes through the API denied. A counter is overwritten,
// never kept: the history of use is in USAGE and ClickHouse.
func CountersStreamConfig(c StreamConfig) jetstream.StreamConfig {
	c = c.withDefaults()
	return jetstream.StreamConfig{
		Name:              CountersStream,
		Description:       "keyledger quota counters (plans' quotas, keys' credits, fleet-wide rates)",
		Subjects:          []string{countersPrefix + ">"},
		MaxMsgsPerSubject: 1,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          c.Replicas,
		AllowRollup:       true,
		DenyDelete:        true,
		AllowDirect:       true,
		Duplicates:        2 * time.Minute,
		Discard:           jetstream.DiscardNew,
	}
}

// Counters is the quota.Store over CountersBucket.
type Counters struct {
	kv jetstream.KeyValue
}

// OpenCounters binds the counters' bucket, waiting until ctx ends for an
// admin node to have created it.
func OpenCounters(ctx context.Context, js jetstream.JetStream) (*Counters, error) {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		kv, err := js.KeyValue(actx, CountersBucket)
		cancel()
		if err == nil {
			return &Counters{kv: kv}, nil
		}
		select {
		case <-ctx.Done():
			return nil, keyledger.Wrap(keyledger.Unavailable, err, "the quota counters' bucket is not available (are the admin nodes up?)")
		case <-time.After(wait):
		}
	}
}

// CounterKey returns the bucket key of a counter: kind, then the id of
// what it counts (a key id, or keyledger.OwnerID for an owner, whose name
// may hold characters keys cannot).
func CounterKey(kind quota.Kind, id string) string { return string(kind) + "." + id }

// Get implements quota.Store.
func (c *Counters) Get(ctx context.Context, key string) (quota.Value, uint64, error) {
	e, err := c.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return quota.Value{}, 0, quota.ErrNotFound
	}
	if err != nil {
		return quota.Value{}, 0, err
	}
	var v quota.Value
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		// A value no node wrote is treated as the counter's start:
		// overwritten by the next draw, which counts from the
		// revision it replaces.
		return quota.Value{}, e.Revision(), nil
	}
	return v, e.Revision(), nil
}

// Swap implements quota.Store.
func (c *Counters) Swap(ctx context.Context, key string, v quota.Value, rev uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	r, err := c.kv.Update(ctx, key, b, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return 0, quota.ErrStale
	}
	return r, err
}

// ReadCounter returns the value of one counter ("": none yet), for the
// quota API.
func (c *Counters) ReadCounter(ctx context.Context, key string) (quota.Value, bool, error) {
	v, _, err := c.Get(ctx, key)
	if errors.Is(err, quota.ErrNotFound) {
		return quota.Value{}, false, nil
	}
	if err != nil {
		return quota.Value{}, false, keyledger.Wrap(keyledger.Unavailable, err, "cannot read the quota counters")
	}
	return v, true, nil
}

// CounterOf returns the counter key a counters' stream subject carries.
func CounterOf(subject string) (string, error) {
	k, ok := strings.CutPrefix(subject, countersPrefix)
	if !ok {
		return "", fmt.Errorf("not a counter subject: %q", subject)
	}
	return k, nil
}
