// Package client is the Go client of keyledger's whole HTTP API: verify a
// key (POST /v1/verify), manage keys (/v1/keys…), plans and owners
// (/v1/plans…, /v1/owners…), read the fleet (/v1/nodes) and analytics
// (/v1/usage, /v1/quota, /v1/audit, /v1/alerts).
// The keyledger CLI and the end-to-end tests use it too.
//
// Every error is a *keyledger.Error: a node's refusal decoded from its error
// envelope (match it with errors.Is against keyledger.ErrUnauthorized,
// ErrRateLimited…, and RetryAfter for a 429), or code unavailable when the
// node could not be reached or gave no usable answer. Errors never contain a
// key or the admin token.
//
//	c := &client.Client{BaseURL: "http://127.0.0.1:8080"}
//	resp, err := c.Verify(ctx, key, "workflows:read")
//	switch {
//	case err == nil:                                   // resp.KeyID, resp.Owner…
//	case errors.Is(err, keyledger.ErrUnauthorized):     // 401
//	case errors.Is(err, keyledger.ErrForbidden):        // 403
//	case errors.Is(err, keyledger.ErrRateLimited):      // 429, wait client.RetryAfter(err)
//	default:                                            // unavailable: fail closed
//	}
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// Client talks to one keyledger node. A Client is safe for concurrent use.
type Client struct {
	// BaseURL of the node, e.g. "http://127.0.0.1:8080".
	BaseURL string
	// Token is the admin bearer token (or an admin key) sent to admin and
	// analytics endpoints; verification sends none.
	Token string
	// HTTP is the client used (nil: http.DefaultClient). Give it a
	// Timeout, or pass contexts with deadlines.
	HTTP *http.Client
}

// maxResponse bounds the response bodies the Client reads.
const maxResponse = 64 << 20

// ResponseError is the cause (Unwrap) of the *keyledger.Error a call returns
// when the node answered with an error status.
type ResponseError struct {
	// StatusCode is the HTTP status of the answer.
	StatusCode int
	// RetryAfter is the answer's Retry-After (429, 503), else 0.
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
// a Client call: the node's Retry-After, else 0.
func RetryAfter(err error) time.Duration {
	var re *ResponseError
	if errors.As(err, &re) {
		return re.RetryAfter
	}
	return 0
}

// Do sends one request: body (if not nil) as JSON, the Token when auth is
// set, and decodes a 2xx answer into out (nil: discarded; *json.RawMessage:
// kept as it came). It is the building block of every other method, and
// the way to reach an endpoint this package has no method for.
func (c *Client) Do(ctx context.Context, method, path string, auth bool, body, out any) error {
	return c.DoWith(ctx, method, path, auth, nil, body, out)
}

// DoWith is Do with extra request headers (e.g. If-Match).
func (c *Client) DoWith(ctx context.Context, method, path string, auth bool, header map[string]string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			// Never show the value: it may hold a secret.
			return keyledger.Errorf(keyledger.Invalid, "cannot encode the request body")
		}
		rd = bytes.NewReader(b)
	}
	if body != nil {
		header = maps.Clone(header)
		if header == nil {
			header = map[string]string{}
		}
		header["Content-Type"] = "application/json"
	}
	resp, err := c.send(ctx, method, path, auth, header, rd)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "the node's answer was cut off")
	}
	if resp.StatusCode/100 != 2 {
		return decodeRefusal(resp, b)
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *json.RawMessage:
		*o = b
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "the node's answer is not the expected JSON")
	}
	return nil
}

// send sends a request and returns the node's answer, whatever its
// status; the caller closes its body.
func (c *Client) send(ctx context.Context, method, path string, auth bool, header map[string]string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Invalid, err, fmt.Sprintf("bad node URL %s", keyledger.Quote(c.BaseURL)))
	}
	req.Header.Set("Accept", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if auth {
		if c.Token == "" {
			return nil, keyledger.Errorf(keyledger.Unauthorized, "no admin token given")
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		// net/http's errors name the method and URL, never the body or
		// the headers.
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot reach "+redactURL(c.BaseURL))
	}
	return resp, nil
}

// decodeRefusal turns an error answer into a *keyledger.Error whose cause
// carries the status and Retry-After.
func decodeRefusal(resp *http.Response, b []byte) *keyledger.Error {
	cause := &ResponseError{StatusCode: resp.StatusCode}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		cause.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"))
	}
	e := ErrorFromResponse(resp.StatusCode, b)
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
