package console

import (
	"fmt"
	"html"
	"html/template"
	"slices"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/analytics"
)

// Charts are drawn here, on the server, as SVG markup: no chart library
// to vendor, nothing for the browser to run, and a page that reads the
// same with scripts off. Colours are CSS classes (o-<outcome>), so the
// strict Content-Security-Policy needs no inline style.

const (
	chartW, chartH = 720, 220
	padL, padR     = 44, 8
	padT, padB     = 10, 24
)

// outcomeOrder stacks valid at the bottom, then the refusals in the
// verifier's order; outcomes this build does not know go last.
func outcomeOrder(o string) int {
	if v, ok := keyledger.ParseOutcome(o); ok {
		return int(v)
	}
	return 1 << 10
}

// usageChart draws usage points as bars stacked by outcome, one bar per
// interval from from to to, with a legend. It returns the markup and the
// total count.
func usageChart(points []analytics.UsagePoint, from, to time.Time, iv analytics.Interval, label string) (template.HTML, uint64) {
	step := intervalDuration(iv)
	start := from.UTC().Truncate(step)
	n := int(to.Sub(start)/step) + 1
	if to.Sub(start)%step == 0 {
		n--
	}
	n = max(n, 1)
	type cell map[string]uint64
	cells := make([]cell, n)
	var outcomes []string
	var total uint64
	for _, p := range points {
		i := int(p.Time.Sub(start) / step)
		if i < 0 || i >= n {
			continue
		}
		if cells[i] == nil {
			cells[i] = cell{}
		}
		cells[i][p.Outcome] += p.Count
		total += p.Count
		if !slices.Contains(outcomes, p.Outcome) {
			outcomes = append(outcomes, p.Outcome)
		}
	}
	slices.SortFunc(outcomes, func(a, b string) int {
		if d := outcomeOrder(a) - outcomeOrder(b); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	var peak uint64
	for _, c := range cells {
		var s uint64
		for _, v := range c {
			s += v
		}
		peak = max(peak, s)
	}
	scale := niceCeil(peak)
	plotW, plotH := float64(chartW-padL-padR), float64(chartH-padT-padB)
	barW := plotW / float64(n)
	gap := min(barW*0.15, 2)

	var b strings.Builder
	fmt.Fprintf(&b, `<figure class="chart"><svg class="usage" viewBox="0 0 %d %d" role="img" aria-label="%s">`, chartW, chartH, html.EscapeString(label))
	fmt.Fprintf(&b, `<title>%s</title>`, html.EscapeString(label))
	for _, f := range []float64{0, 0.5, 1} {
		y := padT + plotH*(1-f)
		fmt.Fprintf(&b, `<line class="grid" x1="%d" x2="%d" y1="%.1f" y2="%.1f"/>`, padL, chartW-padR, y, y)
		fmt.Fprintf(&b, `<text class="axis" x="%d" y="%.1f" text-anchor="end">%g</text>`, padL-6, y+4, float64(scale)*f)
	}
	for i, c := range cells {
		if len(c) == 0 {
			continue
		}
		x := padL + float64(i)*barW
		y := padT + plotH
		at := start.Add(time.Duration(i) * step)
		for _, o := range outcomes {
			v := c[o]
			if v == 0 {
				continue
			}
			h := plotH * float64(v) / float64(scale)
			y -= h
			fmt.Fprintf(&b, `<rect class="bar %s" x="%.2f" y="%.2f" width="%.2f" height="%.2f"><title>%s %s: %d</title></rect>`,
				outcomeClass(o), x+gap/2, y, max(barW-gap, 0.5), h, fmtBucket(at, iv), html.EscapeString(o), v)
		}
	}
	for _, i := range []int{0, n / 2, n - 1} {
		at := start.Add(time.Duration(i) * step)
		anchor := "middle"
		switch i {
		case 0:
			anchor = "start"
		case n - 1:
			anchor = "end"
		}
		x := padL + (float64(i)+0.5)*barW
		fmt.Fprintf(&b, `<text class="axis" x="%.1f" y="%d" text-anchor="%s">%s</text>`, x, chartH-6, anchor, fmtBucket(at, iv))
	}
	if total == 0 {
		fmt.Fprintf(&b, `<text class="empty" x="%d" y="%d" text-anchor="middle">No verifications in this range</text>`, chartW/2, chartH/2)
	}
	b.WriteString(`</svg><figcaption><ul class="legend">`)
	for _, o := range outcomes {
		var s uint64
		for _, c := range cells {
			s += c[o]
		}
		fmt.Fprintf(&b, `<li><span class="swatch %s"></span>%s <span class="num">%d</span></li>`, outcomeClass(o), html.EscapeString(o), s)
	}
	b.WriteString(`</ul></figcaption></figure>`)
	return template.HTML(b.String()), total
}

func intervalDuration(iv analytics.Interval) time.Duration {
	switch iv {
	case analytics.Minute:
		return time.Minute
	case analytics.Day:
		return 24 * time.Hour
	}
	return time.Hour
}

func fmtBucket(t time.Time, iv analytics.Interval) string {
	t = t.UTC()
	switch iv {
	case analytics.Day:
		return t.Format("Jan 2")
	case analytics.Hour:
		return t.Format("Jan 2 15:04")
	}
	return t.Format("15:04")
}

// niceCeil rounds n up to 1, 2 or 5 times a power of ten (at least 1), so
// the axis reads in round numbers.
func niceCeil(n uint64) uint64 {
	if n <= 1 {
		return 1
	}
	for p := uint64(1); ; p *= 10 {
		for _, m := range []uint64{1, 2, 5} {
			if m*p >= n {
				return m * p
			}
		}
	}
}

// sparkline draws counts (oldest first) as a small line.
func sparkline(counts []uint64, name string) template.HTML {
	const w, h = 96, 24
	var peak, total uint64
	for _, c := range counts {
		peak = max(peak, c)
		total += c
	}
	var pts strings.Builder
	for i, c := range counts {
		x := float64(w) * float64(i) / float64(max(len(counts)-1, 1))
		y := float64(h-2) + 1
		if peak > 0 {
			y = 1 + float64(h-2)*(1-float64(c)/float64(peak))
		}
		fmt.Fprintf(&pts, "%.1f,%.1f ", x, y)
	}
	label := fmt.Sprintf("%d verifications of %s in the last 24 hours", total, name)
	return template.HTML(fmt.Sprintf(`<svg class="spark" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s"><title>%s</title><polyline points="%s"/></svg>`,
		w, h, w, h, html.EscapeString(label), html.EscapeString(label), strings.TrimSpace(pts.String())))
}
