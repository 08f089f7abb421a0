package prometheus

import (
	"time"

	"github.com/keyledger/keyledger/audit"
	"github.com/prometheus/client_golang/prometheus"
)

// RegisterAudit exposes the provable audit's figures: how far the newest
// checkpoint is behind this node's ledger and how old it is (a fleet
// whose admin nodes stopped publishing), its cosignatures, and the
// divergences seen. Read from Stats at scrape time.
func RegisterAudit(reg prometheus.Registerer, a *audit.Auditor, now func() time.Time) {
	gauge := func(name, help string, f func(audit.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(a.Stats()) })
	}
	reg.MustRegister(
		gauge("keyledger_audit_checkpoint_size", "Events covered by the newest signed checkpoint this node has seen.",
			func(s audit.Stats) float64 { return float64(s.LatestSize) }),
		gauge("keyledger_audit_uncheckpointed_events", "Events this node has applied that no signed checkpoint covers yet.",
			func(s audit.Stats) float64 { return float64(s.Uncovered()) }),
		gauge("keyledger_audit_checkpoint_age_seconds", "Age of the newest signed checkpoint (0 before any).",
			func(s audit.Stats) float64 {
				if s.LatestTime.IsZero() {
					return 0
				}
				return now().Sub(s.LatestTime).Seconds()
			}),
		gauge("keyledger_audit_checkpoint_cosigners", "Cosignatures of the newest checkpoint: nodes that recomputed it from their own copy.",
			func(s audit.Stats) float64 { return float64(s.Cosigners) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyledger_audit_divergences_total",
			Help: "Divergences seen: this node's ledger not hashing to a signed checkpoint, or (admin nodes) another node's dissent."},
			func() float64 { return float64(a.Stats().Divergences) }),
	)
}
