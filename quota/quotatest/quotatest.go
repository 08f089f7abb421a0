// Package quotatest is a quota.Store in memory, for unit tests and
// benchmarks (integration tests use nats.Counters on a real JetStream).
package quotatest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/keyledger/keyledger/quota"
)

// Store is a quota.Store in memory. Setting Down makes it unreachable.
type Store struct {
	Down atomic.Bool

	mu   sync.Mutex
	vals map[string]quota.Value
	revs map[string]uint64
	rev  uint64
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{vals: map[string]quota.Value{}, revs: map[string]uint64{}} }

// ErrDown is what an unreachable Store answers.
var ErrDown = errors.New("quotatest: store unreachable")

// Get implements quota.Store.
func (s *Store) Get(_ context.Context, key string) (quota.Value, uint64, error) {
	if s.Down.Load() {
		return quota.Value{}, 0, ErrDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.revs[key]
	if !ok {
		return quota.Value{}, 0, quota.ErrNotFound
	}
	return s.vals[key], r, nil
}

// Swap implements quota.Store.
func (s *Store) Swap(_ context.Context, key string, v quota.Value, rev uint64) (uint64, error) {
	if s.Down.Load() {
		return 0, ErrDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revs[key] != rev {
		return 0, quota.ErrStale
	}
	s.rev++
	s.vals[key], s.revs[key] = v, s.rev
	return s.rev, nil
}

// Value returns the stored value of key.
func (s *Store) Value(key string) quota.Value {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vals[key]
}
