package quota

import "context"

// Sweep runs one sweep now, for tests that drive the clock.
func (m *Meter) Sweep(ctx context.Context) { m.sweep(ctx) }
