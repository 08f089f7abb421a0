package projector

import "github.com/keyledger/keyledger/merkle"

// PublishSnapshotFiles publishes any snapshot and tree files under a
// manifest of the caller's, for the tests' attacks on bootstrapping.
var PublishSnapshotFiles = publishSnapshot

// LeanOn makes p replay on cp as Start would with Options.Trusted, for a
// stream whose last sequence is last, without a stream: the benchmarks
// that time what the projector itself costs an event.
func (p *Projector) LeanOn(cp *merkle.Checkpoint, last uint64) {
	p.trusted, p.target = cp, last
	p.adoptTrust()
}

// FollowOpts are the projector's pull options, for a benchmark of the
// stream alone under the same consumer.
var FollowOpts = followOpts
