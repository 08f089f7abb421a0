package bench

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"runtime"
	"time"
	"unsafe"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/internal/hugepages"
	"github.com/keyledger/keyledger/projector"
	"github.com/keyledger/keyledger/verifier"
)

// verify times in-process verification of a valid key and of a key with a
// bad checksum against a table of --keys entries.
func verify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench verify", stderr)
	n := fs.Int("keys", 100_000, "keys in the table")
	dur := fs.Duration("duration", 2*time.Second, "how long each case runs")
	random := fs.Bool("random", false, "also verify every key of the table once, in random order (cache misses included), and report the table's heap per key")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *n < 1 || *dur <= 0 {
		return usageErr("--keys and --duration must be positive")
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p := projector.New(nil, projector.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	at := time.Now().UTC()
	var valid string
	// With --random every secret is kept, in one arena, in the order
	// they will be verified: read sequentially like requests off the
	// network, while their table entries are reached in random order.
	var arena []byte
	var keyLen int
	var order []int32
	if *random {
		order = make([]int32, *n)
		for i := range order {
			order[i] = int32(i)
		}
		mrand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	for i := 0; i < *n; i++ {
		if i%1_000_000 == 999_999 {
			fmt.Fprintf(stderr, "%d keys…\n", i+1)
		}
		secret, err := keyledger.DefaultFormat.New(keyledger.EnvLive, rand.Reader)
		if err != nil {
			return err
		}
		if i == 0 {
			valid = secret
			if *random {
				keyLen = len(secret)
				arena = make([]byte, keyLen**n)
			}
		}
		if *random {
			if len(secret) != keyLen {
				return fmt.Errorf("bench verify: keys of different lengths")
			}
			copy(arena[int(order[i])*keyLen:], secret)
		}
		ev := &events.KeyCreated{
			Header:      events.NewHeader(events.TypeKeyCreated, events.NewKeyID(), "bench", at),
			Environment: keyledger.EnvLive, Permissions: []string{"workflows:read"}, Owner: "bench",
			Hash: keyledger.HashSecret(secret).String(),
		}
		p.Apply(uint64(i+1), ev)
	}
	order = nil
	var tableBytes float64
	if *random {
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		tableBytes = float64(after.HeapAlloc-min(before.HeapAlloc, after.HeapAlloc)) - float64(len(arena))
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
	extra := map[string]float64{"bad_checksum_ns": badNS, "keys": float64(*n)}
	rows := [][]string{
		{"keys in table", fmt.Sprint(*n)},
		{"valid key", fmt.Sprintf("%.0f ns/op", validNS)},
		{"bad checksum", fmt.Sprintf("%.0f ns/op", badNS)},
	}
	if *random {
		req := &verifier.Request{Permission: "workflows:read"}
		start := time.Now()
		for i := 0; i < *n; i++ {
			req.Key = unsafe.String(&arena[i*keyLen], keyLen)
			if o := v.Verify(req).Outcome; o != keyledger.OutcomeValid {
				return fmt.Errorf("bench verify: key %d: outcome %v", i, o)
			}
		}
		randomNS := float64(time.Since(start).Nanoseconds()) / float64(*n)
		arena = nil
		chaseNS := memoryLatency(int(tableBytes))
		extra["random_valid_ns"], extra["table_bytes_per_key"], extra["memory_latency_ns"] = randomNS, tableBytes/float64(*n), chaseNS
		rows = append(rows, []string{"valid keys, each once, random order", fmt.Sprintf("%.0f ns/op", randomNS)},
			[]string{"table heap per key", fmt.Sprintf("%.0f B", tableBytes/float64(*n))},
			[]string{"one memory access at random, on huge pages, as large as the table", fmt.Sprintf("%.0f ns", chaseNS)})
	}
	return report(stdout, *asJSON, Result{
		Name: "verify_valid_ns", Value: validNS, Unit: "ns/op", Extra: extra,
		Notes: "one goroutine; see BenchmarkVerify for allocations and the parallel case",
	}, rows)
}

// memoryLatency is what one access to memory at random costs in an array
// of size bytes, on huge pages as the table's arrays are: a chase through
// its cache lines in random order, each address read from the line
// before, so no two accesses overlap. A lookup in a table far larger
// than the CPU's caches cannot cost less than its dependent accesses at
// this price; it puts the random-order figure in the machine's terms.
func memoryLatency(size int) float64 {
	lines := max(size/64, 1024)
	mem := make([]uint64, lines*8)
	hugepages.Slice(mem)
	order := make([]int32, lines)
	for i := range order {
		order[i] = int32(i)
	}
	mrand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for i := range order {
		mem[int(order[i])*8] = uint64(order[(i+1)%lines]) * 8
	}
	order = nil
	const steps = 2_000_000
	at := uint64(0)
	start := time.Now()
	for range steps {
		at = mem[at]
	}
	ns := float64(time.Since(start).Nanoseconds()) / steps
	runtime.KeepAlive(at)
	return ns
}
