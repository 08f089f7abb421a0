package nats_test

import (
	"context"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	"github.com/keyledger/keyledger/verifier"
	"github.com/keyledger/keyledger/verifier/verifiertest"
	"github.com/nats-io/nats.go/jetstream"
)

func TestUsagePublisher(t *testing.T) {
	env := natstest.MustStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	f := verifiertest.New(t)
	live, liveID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	up := nats.NewUsagePublisher(env.JS, nats.UsageOptions{Batch: 64})
	up.Start(ctx)
	v := verifier.New(f.P.Table(), verifier.Config{Environment: keyledger.EnvLive, Node: "node-a", Usage: up})

	const n = 1000
	for i := 0; i < n; i++ {
		key := live
		if i%10 == 0 {
			key = "fsk_live_" + strings.Repeat("Z", 36) // malformed, unknown owner
		}
		v.Verify(&verifier.Request{Key: key, Permission: "workflows:read", IP: "192.0.2.4", UserAgent: "ua", Method: "GET", Path: "/p"})
	}
	if err := up.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st := up.Stats()
	if st.Published != n || st.Shed != 0 || st.Failed != 0 {
		t.Fatalf("stats %+v, want %d published", st, n)
	}

	stream, err := env.JS.Stream(ctx, nats.UsageStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Events travel in batches: fewer messages than events, and exactly
	// as many as the publisher had acknowledged.
	if info.State.Msgs != st.Messages || info.State.Msgs >= n {
		t.Fatalf("USAGE holds %d messages for %d events, publisher counted %d", info.State.Msgs, n, st.Messages)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(int(info.State.Msgs), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var valid, malformed int
	ids := map[string]bool{}
	for m := range batch.Messages() {
		if m.Subject() != "keyledger.usage.live.batch.node-a" {
			t.Fatalf("subject %q", m.Subject())
		}
		if strings.Contains(string(m.Data()), live) || strings.Contains(string(m.Data()), "ZZZZ") {
			t.Fatalf("usage event carries a presented key: %s", m.Data())
		}
		if c := strings.Count(string(m.Data()), "\n"); c > 64 {
			t.Fatalf("a message holds %d events, more than the batch size", c)
		}
		for data, rest := events.NextUsage(m.Data()); data != nil; data, rest = events.NextUsage(rest) {
			ev, err := events.Decode(data)
			if err != nil {
				t.Fatalf("undecodable usage event %s: %v", data, err)
			}
			u := ev.(*events.KeyUsed)
			if ids[u.EventID] {
				t.Fatalf("duplicate event id %s", u.EventID)
			}
			ids[u.EventID] = true
			if u.Node != "node-a" || u.IP != "192.0.2.4" || u.Environment != keyledger.EnvLive || u.Permission != "workflows:read" || u.At.IsZero() {
				t.Fatalf("event %+v", u)
			}
			switch u.Outcome {
			case keyledger.OutcomeValid:
				valid++
				if u.KeyID != liveID {
					t.Fatalf("valid event key %q", u.KeyID)
				}
			case keyledger.OutcomeMalformed:
				malformed++
				if u.KeyID != "" {
					t.Fatalf("malformed event key %q", u.KeyID)
				}
			default:
				t.Fatalf("outcome %v", u.Outcome)
			}
		}
	}
	if valid != 900 || malformed != 100 {
		t.Fatalf("valid %d malformed %d, want 900/100", valid, malformed)
	}
}

func TestUsagePublisher_shedsWhenFull(t *testing.T) {
	env := natstest.MustStart(t)
	up := nats.NewUsagePublisher(env.JS, nats.UsageOptions{Buffer: 10})
	// Not started: nothing drains the buffer, so it fills.
	for i := 0; i < 25; i++ {
		up.Record(events.KeyUsed{Environment: keyledger.EnvLive})
	}
	if st := up.Stats(); st.Shed != 15 || st.Buffered != 10 {
		t.Fatalf("stats %+v, want 15 shed and 10 buffered", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up.Start(ctx)
	if err := up.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := up.Stats(); st.Published != 10 {
		t.Fatalf("after close %+v, want the 10 buffered published", st)
	}
	up.Record(events.KeyUsed{Environment: keyledger.EnvLive})
	if st := up.Stats(); st.Shed != 16 {
		t.Fatalf("record after close: %+v, want counted as shed", st)
	}
}

func BenchmarkUsagePublisher(b *testing.B) {
	env := natstest.MustStart(b)
	ctx := context.Background()
	up := nats.NewUsagePublisher(env.JS, nats.UsageOptions{})
	up.Start(ctx)
	ev := events.KeyUsed{Environment: keyledger.EnvLive, Outcome: keyledger.OutcomeValid, IP: "192.0.2.1",
		UserAgent: "bench", Method: "GET", Path: "/v1/x", Node: "n", Header: events.Header{KeyID: "key_x", At: time.Now()}}
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		up.Record(ev)
	}
	if err := up.Close(ctx); err != nil {
		b.Fatal(err)
	}
	st := up.Stats()
	b.ReportMetric(float64(st.Published)/time.Since(start).Seconds(), "published/s")
	b.ReportMetric(float64(st.Shed), "shed")
}

// TestUsagePublisher_retriesAFailedBatch: a batch the stream does not take
// (USAGE missing for a moment) is published again within AckTimeout, not
// dropped at the first failure, and lands once.
func TestUsagePublisher_retriesAFailedBatch(t *testing.T) {
	env := natstest.MustStart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := env.JS.DeleteStream(ctx, nats.UsageStream); err != nil {
		t.Fatal(err)
	}
	up := nats.NewUsagePublisher(env.JS, nats.UsageOptions{Batch: 64, AckTimeout: 30 * time.Second})
	up.Start(ctx)
	f := verifiertest.New(t)
	live, _ := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	v := verifier.New(f.P.Table(), verifier.Config{Environment: keyledger.EnvLive, Node: "node-a", Usage: up})
	const n = 10
	for range n {
		v.Verify(&verifier.Request{Key: live})
	}
	for up.Stats().Retried == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("no retry")
		case <-time.After(10 * time.Millisecond): // polling a counter
		}
	}
	if err := nats.EnsureStreams(ctx, env.JS, nats.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := up.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := up.Stats(); st.Published != n || st.Failed != 0 {
		t.Fatalf("stats %+v: want all %d published after the retry, none failed", st, n)
	}
	s, err := env.JS.Stream(ctx, nats.UsageStream)
	if err != nil {
		t.Fatal(err)
	}
	// Every acknowledged batch is stored once: no retry stored twice.
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != up.Stats().Messages {
		t.Fatalf("USAGE holds %d messages, the publisher had %d acknowledged", info.State.Msgs, up.Stats().Messages)
	}
}
