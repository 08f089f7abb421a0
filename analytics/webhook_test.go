package analytics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Webhook deliveries are signed: a receiver holding the secret accepts
// keyledger's POST, and refuses a forged, altered or replayed one.
func TestWebhookSignature(t *testing.T) {
	secret := []byte("whsec-test-0123456789")
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	var got []error
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, VerifyWebhook(secret, r.Header.Get(WebhookSignatureHeader), body, now.Add(time.Minute), 0))
		mu.Unlock()
	}))
	defer srv.Close()
	a := &Analytics{cfg: Config{WebhookURL: srv.URL, WebhookClient: srv.Client(), WebhookAttempts: 1, WebhookSecret: secret,
		Now: func() time.Time { return now }}}
	if err := a.postWebhook(context.Background(), Notice{Notice: NoticeFiring, Incident: Incident{ID: "inc_1", Rule: RuleNewSource, KeyID: "key_1", OpenedAt: now}}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(got) != 1 || got[0] != nil {
		t.Fatalf("the receiver's check: %v", got)
	}
	mu.Unlock()

	body := []byte(`{"rule":"new_source"}`)
	sig := SignWebhook(secret, body, now)
	for _, tc := range []struct {
		name   string
		secret []byte
		header string
		body   string
		at     time.Time
		want   error
	}{
		{"genuine", secret, sig, string(body), now, nil},
		{"attack: no signature", secret, "", string(body), now, ErrWebhookUnsigned},
		{"attack: another secret", []byte("guess"), sig, string(body), now, ErrWebhookBadMAC},
		{"attack: altered body", secret, sig, `{"rule":"resolved"}`, now, ErrWebhookBadMAC},
		{"attack: replayed an hour later", secret, sig, string(body), now.Add(time.Hour), ErrWebhookStale},
		{"attack: a timestamp moved forward", secret, "t=" + "9999999999" + sig[len("t=")+10:], string(body), now, ErrWebhookStale},
		{"attack: a timestamp moved within the tolerance", secret, "t=" + strconv.FormatInt(now.Unix()+60, 10) + sig[len("t=")+10:], string(body), now, ErrWebhookBadMAC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := VerifyWebhook(tc.secret, tc.header, []byte(tc.body), tc.at, 0); !errors.Is(err, tc.want) {
				t.Fatalf("VerifyWebhook = %v, want %v", err, tc.want)
			}
		})
	}
}
