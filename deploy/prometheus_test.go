package deploy_test

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// The alerting rules are valid (promtool check rules), fire when they
// should and not before (promtool test rules rules_test.yml), query only
// metrics a node exports, and each has a runbook paragraph in the README.
func TestPrometheusRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not on PATH: run `make test`, which installs it (scripts/promtool.sh install)")
	}
	for _, args := range [][]string{{"check", "rules", "rules.yml"}, {"test", "rules", "rules_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	rules, err := os.ReadFile("prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	alerts := regexp.MustCompile(`(?m)^\s*- alert: (\w+)`).FindAllStringSubmatch(string(rules), -1)
	if len(alerts) < 10 {
		t.Fatalf("only %d alerts", len(alerts))
	}
	for _, a := range alerts {
		// The runbook anchor is the alert's own heading.
		if !strings.Contains(string(readme), "#### "+a[1]+"\n") {
			t.Errorf("alert %s has no runbook paragraph (#### %s) in the README", a[1], a[1])
		}
	}
	// Every metric the rules query is one of the dashboard's, which
	// TestGrafanaDashboard checks against a live node; or one the node is
	// known to export.
	dash, _ := os.ReadFile("grafana/keyledger.json")
	for _, m := range regexp.MustCompile(`keyledger_[a-z_]+`).FindAllString(string(rules), -1) {
		if !strings.Contains(string(dash), m) {
			t.Errorf("the rules query %s, which the dashboard (checked against a node) does not", m)
		}
	}
}
