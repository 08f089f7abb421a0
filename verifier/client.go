package verifier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// Client verifies keys over HTTP with a verifier node's POST /v1/verify, for
// services that do not run the verifier in process.
//
//	c := &verifier.Client{BaseURL: "http://127.0.0.1:8080"}
//	resp, err := c.Verify(ctx, key, "workflows:read")
//	switch {
//	case err == nil:                                   // resp.KeyID, resp.Owner…
//	case errors.Is(err, keyledger.ErrUnauthorized):     // 401
//	case errors.Is(err, keyledger.ErrForbidden):        // 403
//	case errors.Is(err, keyledger.ErrRateLimited):      // 429, wait verifier.RetryAfter(err)
//	default:                                            // unavailable: fail closed
//	}
//
// A Client is safe for concurrent use.
type Client struct {
	// BaseURL of a verifier node, e.g. "http://127.0.0.1:8080".
	BaseURL string
	// HTTP is the client used (nil: http.DefaultClient). Give it a
	// Timeout, or pass Verify a context with a deadline.
	HTTP *http.Client
}

// maxResponse bounds the response bodies the Client reads.
const maxResponse = 64 << 10

// ResponseError is the cause (Unwrap) of the *keyledger.Error Verify returns
// when the node answered with an error status.
type ResponseError struct {
	// StatusCode is the HTTP status of the answer.
	StatusCode int
	// RetryAfter is the answer's Retry-After (429), else 0.
	RetryAfter time.Duration
}

// Error implements error.
func (e *ResponseError) Error() string {
	if e.RetryAfter > 0 {
		return fmt.Sprintf("HTTP %d, retry after %v", e.StatusCode, e.RetryAfter)
	}
	return fmt.Sprintf("HTTP %d", e.StatusCode)
}

// RetryAfter returns how long to wait before retrying after err, an error of
// Client.Verify: the node's Retry-After for a 429, else 0.
func RetryAfter(err error) time.Duration {
	var re *ResponseError
	if errors.As(err, &re) {
		return re.RetryAfter
	}
	return 0
}

// Verify asks the node whether key may be used for permission ("" requires
// a valid key only). It returns the key's identity when it may, and else a
// *keyledger.Error: the node's refusal as decoded from its error envelope
// (Code unauthorized, forbidden, rate_limited, unavailable…; Reason;
// Message), or code unavailable when the node could not be reached or gave
// no usable answer. The error never contains the key.
func (c *Client) Verify(ctx context.Context, key, permission string) (*VerifyResponse, error) {
	body, err := json.Marshal(verifyRequest{Key: key, Permission: permission})
	if err != nil {
		// Unreachable for strings; never show the value.
		return nil, keyledger.Errorf(keyledger.Invalid, "cannot encode the verify request")
	}
	url := strings.TrimRight(c.BaseURL, "/") + "/v1/verify"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Invalid, err, "bad verifier URL")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		// net/http's errors name the method and URL, never the body.
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "the verifier did not answer")
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "the verifier's answer was cut off")
	}
	if resp.StatusCode == http.StatusOK {
		var vr VerifyResponse
		if err := json.Unmarshal(b, &vr); err != nil || !vr.Valid || vr.KeyID == "" {
			return nil, keyledger.Errorf(keyledger.Unavailable, "the verifier answered 200 without a valid verification")
		}
		return &vr, nil
	}
	return nil, decodeRefusal(resp, b)
}

// decodeRefusal turns an error answer into a *keyledger.Error whose cause
// carries the status and Retry-After.
func decodeRefusal(resp *http.Response, b []byte) *keyledger.Error {
	cause := &ResponseError{StatusCode: resp.StatusCode}
	if resp.StatusCode == http.StatusTooManyRequests {
		cause.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"))
	}
	e := keyledger.ErrorFromResponse(resp.StatusCode, b)
	e.Err = cause
	return e
}

// parseRetryAfter reads a Retry-After of delay-seconds or an HTTP date.
func parseRetryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
