// Package nats is keyledger on NATS JetStream: everything a node says to
// or hears from the bus lives here.
//
//   - the embedded NATS server (Server), so one binary is a whole system;
//   - the two streams (KEYS, the ledger, kept forever; USAGE, a buffer of
//     KeyUsed batches until analytics has them) and their subjects;
//   - Log, the ledger seen as an append-only log with optimistic
//     concurrency, and its reads;
//   - the fleet: every node's heartbeat (Announcer) and the admin nodes'
//     view of who is live and how far each has applied (Registry);
//   - the UsagePublisher, which batches KeyUsed events onto USAGE without
//     ever blocking a verification.
//
// The event schema itself is package events; this package only moves and
// stores its bytes. The library github.com/nats-io/nats.go is imported as
// natsgo throughout, so that "nats" always means this package.
package nats
