package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
)

// verify times in-process verification of a valid key and of a key with a
// bad checksum against a table of --keys entries.
func verify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench verify", stderr)
	n := fs.Int("keys", 100_000, "keys in the table")
	dur := fs.Duration("duration", 2*time.Second, "how long each case runs")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *n < 1 || *dur <= 0 {
		return usageErr("--keys and --duration must be positive")
	}
	p := projector.New(nil, projector.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	at := time.Now().UTC()
	var valid string
	for i := 0; i < *n; i++ {
		secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, rand.Reader)
		if err != nil {
			return err
		}
		if i == 0 {
			valid = secret
		}
		ev := &events.KeyCreated{
			Header:      events.NewHeader(events.TypeKeyCreated, events.NewKeyID(), "bench", at),
			Environment: keyledger.EnvLive, Permissions: []string{"workflows:read"}, Owner: "bench",
			Hash: keyledger.HashSecret(secret).String(),
		}
		p.Apply(uint64(i+1), ev)
	}
	v := verifier.New(p.Table(), verifier.Config{Environment: keyledger.EnvLive})
	bad := []byte(valid)
	bad[len(bad)-1] ^= 1
	time1 := func(key, perm string, want keyledger.Outcome) (float64, error) {
		req := &verifier.Request{Key: key, Permission: perm}
		if o := v.Verify(req).Outcome; o != want {
			return 0, fmt.Errorf("bench verify: outcome %v, want %v", o, want)
		}
		var ops int
		start := time.Now()
		for time.Since(start) < *dur {
			for range 10_000 {
				v.Verify(req)
			}
			ops += 10_000
		}
		return float64(time.Since(start).Nanoseconds()) / float64(ops), nil
	}
	validNS, err := time1(valid, "workflows:read", keyledger.OutcomeValid)
	if err != nil {
		return err
	}
	badNS, err := time1(string(bad), "", keyledger.OutcomeMalformed)
	if err != nil {
		return err
	}
	return report(stdout, *asJSON, Result{
		Name: "verify_valid_ns", Value: validNS, Unit: "ns/op",
		Extra: map[string]float64{"bad_checksum_ns": badNS, "keys": float64(*n)},
		Notes: "one goroutine; see BenchmarkVerify for allocations and the parallel case",
	}, [][]string{
		{"keys in table", fmt.Sprint(*n)},
		{"valid key", fmt.Sprintf("%.0f ns/op", validNS)},
		{"bad checksum", fmt.Sprintf("%.0f ns/op", badNS)},
	})
}
