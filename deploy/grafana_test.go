package deploy_test

import (
	"encoding/json"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyledger/keyledger/analytics/analyticstest"
	"github.com/keyledger/keyledger/node/nodetest"
)

// The Grafana dashboard queries only metrics a node exports: a node with
// analytics on is started, and every keyledger_* name in every panel's
// expressions must be in its /metrics. The dashboard has a node variable,
// and every query honours it.
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/keyledger.json")
	if err != nil {
		t.Fatal(err)
	}
	type variable struct{ Name, Query string }
	var dash struct {
		Title      string
		Templating struct {
			List []variable
		}
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if !slices.ContainsFunc(dash.Templating.List, func(v variable) bool { return v.Name == "instance" }) {
		t.Fatal("the dashboard has no node (instance) variable")
	}

	addr := analyticstest.Addr(t)
	cfg := nodetest.Config(t.TempDir(), io.Discard)
	cfg.ClickHouse = analyticstest.DSN(addr, analyticstest.MustTempDatabase(t, addr))
	n := nodetest.MustOpenConfig(t, cfg)
	c := &nodetest.Caller{T: t, Base: n.URL(), Token: n.Token()}
	nodetest.WaitReady(t, c)
	nodetest.WaitFor(t, 30*time.Second, "analytics to run", func() bool {
		_, _, body := c.Call("GET", "/metrics", "", "")
		return strings.Contains(string(body), "keyledger_analytics_up 1")
	})
	_, _, body := c.Call("GET", "/metrics", "", "")
	exported := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, kind, _ := strings.Cut(name, " ")
			exported[name] = true
			if kind == "histogram" {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					exported[name+suffix] = true
				}
			}
		}
	}
	metric := regexp.MustCompile(`keyledger_[a-z_]+`)
	queried := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q: %s ignores the node variable", p.Title, tg.Expr)
			}
			for _, name := range metric.FindAllString(tg.Expr, -1) {
				queried++
				if !exported[name] {
					t.Errorf("panel %q queries %s, which no node exports", p.Title, name)
				}
			}
		}
	}
	if queried < 10 {
		t.Fatalf("the dashboard queries only %d metrics", queried)
	}
}
