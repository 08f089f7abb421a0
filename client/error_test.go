package client_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/client"
	khttp "github.com/keyledger/keyledger/http"
)

func TestErrorFromResponse(t *testing.T) {
	// Every error WriteError sends comes back with its code and reason.
	for _, e := range []*keyledger.Error{
		keyledger.Errorf(keyledger.Invalid, "bad"), keyledger.ErrUnauthorized, keyledger.Errorf(keyledger.Forbidden, "no"),
		keyledger.Errorf(keyledger.NotFound, "gone"), {Code: keyledger.Conflict, Reason: keyledger.ReasonAlreadyRevoked, Message: "r"},
		keyledger.Errorf(keyledger.RateLimited, "slow"), keyledger.Errorf(keyledger.Unavailable, "down"),
		{Code: keyledger.Invalid, Reason: keyledger.ReasonBodyTooLarge, Message: "big"},
	} {
		w := httptest.NewRecorder()
		khttp.WriteError(w, e)
		got := client.ErrorFromResponse(w.Code, w.Body.Bytes())
		if got.Code != e.Code || got.Reason != e.Reason {
			t.Errorf("%v came back as %v", e, got)
		}
	}
	// Without an envelope the status decides, and the body is not shown.
	for status, want := range map[int]keyledger.Code{
		401: keyledger.Unauthorized, 403: keyledger.Forbidden, 404: keyledger.NotFound, 409: keyledger.Conflict,
		413: keyledger.Invalid, 415: keyledger.Invalid, 429: keyledger.RateLimited, 500: keyledger.Internal,
		502: keyledger.Unavailable, 503: keyledger.Unavailable, 504: keyledger.Unavailable,
	} {
		got := client.ErrorFromResponse(status, []byte("<html>secret page</html>"))
		if got.Code != want || strings.Contains(got.Message, "secret") {
			t.Errorf("status %d: %v, want %s", status, got, want)
		}
	}
}
