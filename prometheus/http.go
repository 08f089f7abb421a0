package prometheus

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HTTPMetrics counts the answers of a node's net/http endpoints (the
// admin API, analytics, the console, /v1/verify; forward auth is counted
// by VerifyMetrics) by route pattern and status, and times them, so that
// an admin API answering 500s or 503s shows on a dashboard and pages.
type HTTPMetrics struct {
	total    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewHTTPMetrics registers keyledger_http_requests_total{route,code} and
// keyledger_http_request_duration_seconds{route} on reg.
func NewHTTPMetrics(reg prometheus.Registerer) *HTTPMetrics {
	m := &HTTPMetrics{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyledger_http_requests_total",
			Help: "Answers of the net/http endpoints (admin API, analytics, console, /v1/verify) by route pattern and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyledger_http_request_duration_seconds",
			Help:    "Time to answer a request of the net/http endpoints, by route pattern.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10), // 100 µs to ~26 s
		}, []string{"route"}),
	}
	if reg != nil {
		reg.MustRegister(m.total, m.duration)
	}
	// The series every rule and panel reads exist from the start.
	m.total.WithLabelValues("other", "500")
	m.total.WithLabelValues("other", "503")
	return m
}

// Wrap counts h's answers. The route is the pattern the router matched
// (http.Request.Pattern, set by http.ServeMux on the request it was
// handed), so the label set stays the router's, never a client's path;
// "other" when none matched.
func (m *HTTPMetrics) Wrap(h http.Handler) http.Handler {
	if m == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" || route == "/" {
			route = "other"
		}
		m.total.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		m.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	code    int
	written bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.written {
		s.code, s.written = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.written = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
