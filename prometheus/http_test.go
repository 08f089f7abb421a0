package prometheus

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHTTPMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewHTTPMetrics(reg)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/keys/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "boom" {
			http.Error(w, "internal", http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok"))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	h := m.Wrap(mux)
	for _, p := range []string{"/v1/keys/a", "/v1/keys/b", "/v1/keys/boom", "/nope/some-path"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", p, nil))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "keyledger_http_requests_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			var route, code string
			for _, l := range mt.GetLabel() {
				switch l.GetName() {
				case "route":
					route = l.GetValue()
				case "code":
					code = l.GetValue()
				}
			}
			got[route+" "+code] = mt.GetCounter().GetValue()
		}
	}
	for k, want := range map[string]float64{"GET /v1/keys/{id} 200": 2, "GET /v1/keys/{id} 500": 1, "other 404": 1, "other 503": 0} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], want, got)
		}
	}
	for k := range got {
		if strings.Contains(k, "nope") || strings.Contains(k, "/v1/keys/a") {
			t.Errorf("a request path became a label: %q", k)
		}
	}
}
