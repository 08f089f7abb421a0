package prometheus

import (
	"net/http"

	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/projector"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry is the Prometheus client library's registry, named here so that
// callers need not import that library beside this package.
type Registry = prometheus.Registry

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// RegisterNode exposes the projector's and the usage publisher's
// counters. They are read from Stats at scrape time, so the hot paths keep
// no Prometheus state of their own.
func RegisterNode(reg prometheus.Registerer, p *projector.Projector, u *nats.UsagePublisher) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	reg.MustRegister(
		gauge("keyledger_projector_last_sequence", "Last KEYS stream sequence applied to this node's table.",
			func() float64 { return float64(p.Stats().LastSeq) }),
		gauge("keyledger_projector_lag", "KEYS events in the stream not yet applied on this node (as of the last check).",
			func() float64 { return float64(p.Stats().Lag) }),
		gauge("keyledger_projector_caught_up", "1 once the node has applied the stream as it was at start.",
			func() float64 { return b2f(p.Stats().CaughtUp) }),
		gauge("keyledger_projector_fresh", "1 while the node holds its freshness lease (it serves keys); 0 means it refuses every key with 503.",
			func() float64 { return b2f(p.Stats().Fresh) }),
		gauge("keyledger_projector_keys", "Entries in the verification table, revoked ones included.",
			func() float64 { return float64(p.Stats().Keys) }),
		counter("keyledger_projector_applied_total", "KEYS events that changed the table.",
			func() float64 { return float64(p.Stats().Applied) }),
		counter("keyledger_projector_ignored_total", "KEYS events skipped as duplicate or out of order.",
			func() float64 { return float64(p.Stats().Ignored) }),
		counter("keyledger_projector_poison_total", "Undecodable KEYS events skipped.",
			func() float64 { return float64(p.Stats().Poison) }),
		counter("keyledger_projector_filled_total", "KEYS events read from the stream's leader because this node's consumer had stalled.",
			func() float64 { return float64(p.Stats().Filled) }),
		counter("keyledger_usage_published_total", "KeyUsed events acknowledged by the USAGE stream.",
			func() float64 { return float64(u.Stats().Published) }),
		counter("keyledger_usage_shed_total", "KeyUsed events dropped because the publish buffer was full.",
			func() float64 { return float64(u.Stats().Shed) }),
		counter("keyledger_usage_failed_total", "KeyUsed events whose publish failed or was not acknowledged.",
			func() float64 { return float64(u.Stats().Failed) }),
		counter("keyledger_usage_messages_total", "USAGE messages acknowledged, each a batch of KeyUsed events.",
			func() float64 { return float64(u.Stats().Messages) }),
		gauge("keyledger_usage_buffered", "KeyUsed events waiting to be published.",
			func() float64 { return float64(u.Stats().Buffered) }),
		gauge("keyledger_projector_stream_replaced", "1 when the KEYS stream this node followed was deleted, recreated or cut, or its copy of the ledger does not hash to a signed checkpoint (ledger_divergence): it refuses every verification.",
			func() float64 { return b2f(p.Broken() != "") }),
	)
	for _, reason := range projector.RejectReasons {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "keyledger_projector_rejected_total",
			Help:        "KEYS events refused: not signed by a trusted admin key, or on another key's subject.",
			ConstLabels: prometheus.Labels{"reason": reason},
		}, func() float64 { return float64(p.Rejected()[reason]) }))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler serves reg's metrics.
func Handler(reg *prometheus.Registry) http.Handler {
	// A collector that fails leaves its metrics out of this scrape rather
	// than turning the whole answer into a plain-text 500.
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// RegisterAnalyticsUp exports whether analytics is up (1) or degraded, or
// waiting for ClickHouse (0): /readyz is about verification only.
func RegisterAnalyticsUp(reg prometheus.Registerer, up func() bool) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyledger_analytics_up",
		Help: "1 when analytics runs, 0 while it waits for ClickHouse (the node verifies either way).",
	}, func() float64 { return b2f(up()) }))
}

// RegisterStorageFailed exports whether the embedded NATS server's store
// has failed (a full or read-only disk) and not yet recovered.
func RegisterStorageFailed(reg prometheus.Registerer, failed func() bool) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keyledger_storage_failed",
		Help: "1 while the embedded NATS server's store refuses writes (full or read-only disk); it recovers by itself once the disk takes writes.",
	}, func() float64 { return b2f(failed()) }))
}
