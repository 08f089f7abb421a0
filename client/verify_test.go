package client_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyledger/keyledger/client"
	khttp "github.com/keyledger/keyledger/http"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/verifier/verifiertest"
)

func TestClient_Verify(t *testing.T) {
	f := verifiertest.New(t)
	live, liveID := f.MustCreate(t, keyledger.EnvLive, []string{"workflows:read"}, nil)
	test, _ := f.MustCreate(t, keyledger.EnvTest, nil, nil)
	revoked, revokedID := f.MustCreate(t, keyledger.EnvLive, nil, nil)
	f.Revoke(t, revokedID)
	secrets := []string{live, test, revoked}

	var notReady atomic.Bool
	liveSrv := httptest.NewServer(khttp.NewVerifierHandler(f.Verifier(keyledger.EnvLive, func() bool { return !notReady.Load() })))
	defer liveSrv.Close()
	testSrv := httptest.NewServer(khttp.NewVerifierHandler(f.Verifier(keyledger.EnvTest, nil))) // burst 3
	defer testSrv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := &client.Client{BaseURL: liveSrv.URL + "/", HTTP: &http.Client{Timeout: 5 * time.Second}}

	// refused checks a refusal: a *keyledger.Error of the code, decoded from
	// the node's answer (status in the cause), without any secret.
	refused := func(t *testing.T, resp *khttp.VerifyResponse, err error, code keyledger.Code, status int) *keyledger.Error {
		t.Helper()
		var ke *keyledger.Error
		if resp != nil || !errors.As(err, &ke) || ke.Code != code {
			t.Fatalf("got %+v, %v; want a %s error", resp, err, code)
		}
		if _, ok := err.(*keyledger.Error); !ok {
			t.Fatalf("error is a %T, want *keyledger.Error", err)
		}
		var re *client.ResponseError
		if status != 0 && (!errors.As(err, &re) || re.StatusCode != status) {
			t.Fatalf("cause %v, want HTTP %d", ke.Err, status)
		}
		for _, s := range secrets {
			if strings.Contains(err.Error(), s) || strings.Contains(ke.Message, s) {
				t.Fatalf("the error shows a secret: %v", err)
			}
		}
		return ke
	}

	t.Run("valid", func(t *testing.T) {
		resp, err := c.Verify(ctx, live, "workflows:read")
		if err != nil {
			t.Fatal(err)
		}
		if !resp.Valid || resp.KeyID != liveID || resp.Owner != "acme" || resp.Environment != "live" ||
			len(resp.Permissions) != 1 || resp.Permissions[0] != "workflows:read" || resp.ExpiresAt != nil {
			t.Fatalf("response %+v", resp)
		}
	})
	for _, tc := range []struct{ name, key string }{
		{"unknown", "fsk_live_nope"},
		{"empty", ""},
		{"revoked", revoked},
		{"test key at live node", test},
	} {
		t.Run("401 "+tc.name, func(t *testing.T) {
			resp, err := c.Verify(ctx, tc.key, "")
			ke := refused(t, resp, err, keyledger.Unauthorized, 401)
			if ke.Message != keyledger.UnauthorizedMessage || !errors.Is(err, keyledger.ErrUnauthorized) || client.RetryAfter(err) != 0 {
				t.Fatalf("error %v", err)
			}
		})
	}
	t.Run("403", func(t *testing.T) {
		resp, err := c.Verify(ctx, live, "storage:write")
		ke := refused(t, resp, err, keyledger.Forbidden, 403)
		if !strings.Contains(ke.Message, `"storage:write"`) || !errors.Is(err, keyledger.ErrForbidden) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("429 with Retry-After", func(t *testing.T) {
		tc := &client.Client{BaseURL: testSrv.URL}
		var err error
		for i := 0; i < 4 && err == nil; i++ {
			_, err = tc.Verify(ctx, test, "")
		}
		refused(t, nil, err, keyledger.RateLimited, 429)
		if !errors.Is(err, keyledger.ErrRateLimited) || client.RetryAfter(err) != time.Second {
			t.Fatalf("error %v, RetryAfter %v", err, client.RetryAfter(err))
		}
	})
	t.Run("503 when the node is not ready", func(t *testing.T) {
		notReady.Store(true)
		defer notReady.Store(false)
		resp, err := c.Verify(ctx, live, "")
		refused(t, resp, err, keyledger.Unavailable, 503)
		if !errors.Is(err, keyledger.ErrUnavailable) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("an answer without an envelope", func(t *testing.T) {
		proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("<html>bad gateway</html>"))
		}))
		defer proxy.Close()
		resp, err := (&client.Client{BaseURL: proxy.URL}).Verify(ctx, live, "")
		ke := refused(t, resp, err, keyledger.Unavailable, 502)
		if strings.Contains(ke.Message, "html") {
			t.Fatalf("foreign body shown: %v", err)
		}
	})
	t.Run("transport error", func(t *testing.T) {
		gone := httptest.NewServer(http.NotFoundHandler())
		url := gone.URL
		gone.Close()
		resp, err := (&client.Client{BaseURL: url}).Verify(ctx, live, "workflows:read")
		refused(t, resp, err, keyledger.Unavailable, 0)
		if client.RetryAfter(err) != 0 {
			t.Fatalf("RetryAfter %v", client.RetryAfter(err))
		}
	})
	t.Run("canceled context", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		ccancel()
		resp, err := c.Verify(cctx, live, "")
		refused(t, resp, err, keyledger.Unavailable, 0)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v does not wrap context.Canceled", err)
		}
	})
}
