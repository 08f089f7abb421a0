package console

import (
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/analytics"
)

func TestNiceCeil(t *testing.T) {
	for _, tc := range []struct{ in, want uint64 }{{0, 1}, {1, 1}, {2, 2}, {3, 5}, {5, 5}, {6, 10}, {11, 20}, {201, 500}, {999, 1000}} {
		if got := niceCeil(tc.in); got != tc.want {
			t.Errorf("niceCeil(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestUsageChart(t *testing.T) {
	from := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	to := from.Add(time.Hour)
	pts := []analytics.UsagePoint{
		{Time: from, Outcome: "revoked", Count: 2},
		{Time: from, Outcome: "valid", Count: 5},
		{Time: from.Add(30 * time.Minute), Outcome: "valid", Count: 1},
		{Time: from.Add(59 * time.Minute), Outcome: `<script>x</script>`, Count: 1},
		{Time: from.Add(-time.Minute), Outcome: "valid", Count: 100}, // outside: dropped
	}
	svg, total := usageChart(pts, from, to, analytics.Minute, `usage of "a<b"`)
	s := string(svg)
	if total != 9 {
		t.Errorf("total %d, want 9", total)
	}
	if n := strings.Count(s, `<rect class="bar`); n != 4 {
		t.Errorf("%d bars, want 4", n)
	}
	if strings.Contains(s, "<script>") || strings.Contains(s, `"a<b"`) {
		t.Error("text is not escaped")
	}
	if !strings.Contains(s, `class="bar o-other"`) {
		t.Error("an unknown outcome should get the shared colour")
	}
	// valid stacks below revoked in the first bar: drawn first.
	if strings.Index(s, "o-valid") > strings.Index(s, "o-revoked") {
		t.Error("valid is not at the bottom of the stack")
	}
	if _, total := usageChart(nil, from, to, analytics.Minute, "empty"); total != 0 {
		t.Error("empty chart has a total")
	}
	if s, _ := usageChart(nil, from, to, analytics.Minute, "empty"); !strings.Contains(string(s), "No verifications") {
		t.Error("an empty chart should say so")
	}
}

func TestSparkline(t *testing.T) {
	s := string(sparkline([]uint64{0, 1, 4, 2}, `x"y`))
	if !strings.Contains(s, "7 verifications") || strings.Contains(s, `x"y`) {
		t.Errorf("sparkline: %s", s)
	}
	if strings.Count(s, ",") != 4 {
		t.Errorf("want 4 points: %s", s)
	}
}
