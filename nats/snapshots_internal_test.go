package nats

import (
	"testing"
	"time"
)

func TestDownloadTimeout(t *testing.T) {
	for _, c := range []struct {
		name string
		size uint64
		want time.Duration
	}{
		{"a manifest", 600, time.Minute},
		{"ten thousand keys", 850 << 10, time.Minute},
		{"a million keys", 81 << 20, time.Minute + 20*time.Second},
		{"ten million keys", 847 << 20, time.Minute + 211*time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := downloadTimeout(c.size); got != c.want {
				t.Errorf("downloadTimeout(%d) = %v, want %v", c.size, got, c.want)
			}
		})
	}
}
