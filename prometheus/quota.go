package prometheus

import (
	"github.com/keyledger/keyledger/quota"
	"github.com/prometheus/client_golang/prometheus"
)

// RegisterQuota registers the quota meter's metrics: how often the node
// draws leases, how often it loses a compare-and-set to another node, and
// how often the counters could not be reached (each such draw leaves
// metered keys on what the node holds, then 503).
func RegisterQuota(reg prometheus.Registerer, m *quota.Meter) {
	counter := func(name, help string, f func(quota.Stats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(m.Stats()) })
	}
	reg.MustRegister(
		counter("keyledger_quota_leases_drawn_total", "Leases of quota, credits and fleet-rate units this node drew from the fleet's counters.",
			func(s quota.Stats) float64 { return float64(s.Draws) }),
		counter("keyledger_quota_conflicts_total", "Compare-and-set draws lost to another node and retried.",
			func(s quota.Stats) float64 { return float64(s.Conflicts) }),
		counter("keyledger_quota_failures_total", "Draws that could not reach the counters: metered keys then spend what the node holds, then get 503 (or pass, on a plan that fails open).",
			func(s quota.Stats) float64 { return float64(s.Failures) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "keyledger_quota_counters", Help: "Fleet counters this node has spent from since it started."},
			func() float64 { return float64(m.Stats().Counters) }),
	)
}
