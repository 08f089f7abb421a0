// Package prometheus exposes a node's metrics in the Prometheus format:
// verifications by outcome and their latency, the projector's progress and
// the usage publisher's counters, beside the Go runtime and process
// collectors.
package prometheus

import (
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/verifier"
	"github.com/prometheus/client_golang/prometheus"
)

// VerifyMetrics counts verifications by outcome and their latency. It is a
// Recorder that passes every event on to the next one, so it sees exactly
// what the usage stream sees, and costs the hot path nothing when unused.
type VerifyMetrics struct {
	next    verifier.Recorder
	total   [16]prometheus.Counter // by outcome
	latency prometheus.Histogram
}

// NewVerifyMetrics registers keyledger_verify_total{outcome} and
// keyledger_verify_latency_seconds on reg and returns a Recorder that
// counts and then forwards to next (which may be nil).
func NewVerifyMetrics(reg prometheus.Registerer, next verifier.Recorder) *VerifyMetrics {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keyledger_verify_total",
		Help: "Key verifications by outcome.",
	}, []string{"outcome"})
	m := &VerifyMetrics{
		next: next,
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "keyledger_verify_latency_seconds",
			Help: "Time from receiving a verification request to its decision.",
			// 1 µs to ~16 ms: in-process verifications take well under
			// a microsecond, HTTP ones tens of microseconds.
			Buckets: prometheus.ExponentialBuckets(1e-6, 2, 15),
		}),
	}
	// Resolve every label once, so counting is an atomic add, not a map
	// lookup.
	for _, o := range keyledger.Outcomes() {
		m.total[o] = vec.WithLabelValues(o.String())
	}
	if reg != nil {
		reg.MustRegister(vec, m.latency)
	}
	return m
}

// Record implements verifier.Recorder.
func (m *VerifyMetrics) Record(ev events.KeyUsed) {
	if int(ev.Outcome) < len(m.total) && m.total[ev.Outcome] != nil {
		m.total[ev.Outcome].Inc()
	}
	m.latency.Observe(float64(ev.LatencyUS) * float64(time.Microsecond) / float64(time.Second))
	if m.next != nil {
		m.next.Record(ev)
	}
}
