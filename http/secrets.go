package http

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"unsafe"

	keyledger "github.com/keyledger/keyledger"
)

// Redacted replaces what looks like an API key secret in a recorded path
// and in the server's logs. It is URL-safe, so a redacted path still reads
// as one: /v2/run?api_key=REDACTED.
const Redacted = "REDACTED"

// redactSecrets returns s with every key-shaped token (keyledger.FindSecret)
// replaced by Redacted. A client that puts its key in a URL has exposed
// it, but the ledger must not keep a copy: usage records are kept for
// months and read by more people than the key's owner. s itself comes
// back, without allocating, when it holds no such token.
func redactSecrets(s string) string { return keyledger.RedactSecrets(s, Redacted) }

// redactPath is redactSecrets for a URL path (and query) being recorded.
// A key whose underscores are percent-encoded (fsk%5Flive%5F…) is found
// too: such a path is recorded decoded, with the key redacted. s itself
// comes back, without allocating, when it holds no key either way.
func redactPath(s string) string {
	if hasEncodedUnderscore(s) {
		if d, err := url.PathUnescape(s); err == nil && keyledger.LooksLikeSecret(d) {
			return redactSecrets(d)
		}
	}
	return redactSecrets(s)
}

// pathHoldsSecret reports whether redactPath would change s.
func pathHoldsSecret(s string) bool {
	if keyledger.LooksLikeSecret(s) {
		return true
	}
	if hasEncodedUnderscore(s) {
		d, err := url.PathUnescape(s)
		return err == nil && keyledger.LooksLikeSecret(d)
	}
	return false
}

// hasEncodedUnderscore reports whether s holds "%5F" (any case).
func hasEncodedUnderscore(s string) bool {
	for {
		i := strings.IndexByte(s, '%')
		if i < 0 || i+2 >= len(s) {
			return false
		}
		if s[i+1] == '5' && (s[i+2] == 'F' || s[i+2] == 'f') {
			return true
		}
		s = s[i+1:]
	}
}

// errExposedSecret answers an admin request whose path or query holds a
// key-shaped value. The value is not repeated, and the caller learns what
// matters more than the mistake: the key has travelled in a URL.
var errExposedSecret = &keyledger.Error{Code: keyledger.Invalid, Reason: keyledger.ReasonExposedSecret,
	Message: "the request's path or query holds a value that looks like an API key secret; keyledger did not record it, " +
		"but URLs end up in proxy and access logs: treat the key as exposed and revoke it " +
		"(the admin API takes key ids such as key_01…, never secrets)"}

// urlHoldsSecret reports whether r's path or query (raw or decoded) holds
// a key-shaped value.
func urlHoldsSecret(r *http.Request) bool {
	if keyledger.LooksLikeSecret(r.URL.Path) || keyledger.LooksLikeSecret(r.URL.RawPath) || keyledger.LooksLikeSecret(r.URL.RawQuery) {
		return true
	}
	if r.URL.RawQuery == "" {
		return false
	}
	// Percent-encoding may hide a token from the raw form
	// (fsk%5Flive%5F…); the decoded names and values cannot.
	q, _ := url.ParseQuery(r.URL.RawQuery)
	for k, vs := range q {
		if keyledger.LooksLikeSecret(k) {
			return true
		}
		for _, v := range vs {
			if keyledger.LooksLikeSecret(v) {
				return true
			}
		}
	}
	return false
}

// refuseSecrets answers errExposedSecret, before anything else looks at
// the request (authentication included: an admin key's verification
// records the path), to a request whose URL holds a key-shaped value.
// Handlers below it echo path segments and query values in their errors
// ("no key …"); none of them will see a secret to echo.
func refuseSecrets(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if urlHoldsSecret(r) {
			WriteError(w, errExposedSecret)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// errNoEndpoint is the 404 for path. It names the path, unless that is
// long or key-shaped (then it says so instead: see errExposedSecret).
func errNoEndpoint(path string) error {
	if keyledger.LooksLikeSecret(path) {
		return errExposedSecret
	}
	if len(path) > 128 {
		return keyledger.Errorf(keyledger.NotFound, "no such endpoint")
	}
	return keyledger.Errorf(keyledger.NotFound, "no such endpoint: %s", path)
}

// maxLogLine bounds a line the HTTP library logs on the server's behalf.
const maxLogLine = 1024

// libraryLogger is the fasthttp.Logger of a Server: what fasthttp (and its
// net/http adaptor) logs goes to the node's slog logger at Warn, scrubbed.
// fasthttp's messages can carry the request line and, for a request it
// cannot parse, the raw request; SecureErrorLogMessage keeps the raw
// request out, and this keeps out what is left: anything key-shaped, the
// credential after "Bearer", and the node's admin token, wherever they
// appear. Lines are cut at maxLogLine.
type libraryLogger struct {
	log    *slog.Logger
	secret string // the admin token ("" for none)
}

// Printf implements fasthttp.Logger.
func (l libraryLogger) Printf(format string, args ...any) {
	l.log.Warn(scrubLogLine(fmt.Sprintf(format, args...), l.secret), "source", "http server")
}

// scrubLogLine removes secrets from s (see libraryLogger).
func scrubLogLine(s, secret string) string {
	if len(secret) >= 8 {
		s = strings.ReplaceAll(s, secret, Redacted)
	}
	s = redactCredentials(s)
	s = redactSecrets(s)
	if len(s) > maxLogLine {
		s = s[:maxLogLine] + "…(cut)"
	}
	return strings.ToValidUTF8(s, "?")
}

// redactCredentials replaces the credential after every "Bearer " or
// "Basic " (any case) in s, up to the next blank, quote, comma or
// backslash (an escaped line break in a quoted dump).
func redactCredentials(s string) string {
	var b strings.Builder
	last := 0
	for i := 0; i < len(s); i++ {
		n := schemeAt(s, i)
		if n == 0 {
			continue
		}
		start, end := i+n, i+n
		for end < len(s) && strings.IndexByte(" \t\r\n\"',\\", s[end]) < 0 {
			end++
		}
		if end > start {
			b.WriteString(s[last:start])
			b.WriteString(Redacted)
			last = end
		}
		i = end - 1
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

var authSchemes = []string{"bearer ", "basic "}

// schemeAt is the length of the authorization scheme (and its blank) at
// s[i:], 0 if there is none.
func schemeAt(s string, i int) int {
	for _, sc := range authSchemes {
		if len(s)-i >= len(sc) && strings.EqualFold(s[i:i+len(sc)], sc) {
			return len(sc)
		}
	}
	return 0
}

// bytesView views s as bytes without copying, for values that are only
// read and do not outlive the handler (s is fasthttp's memory).
func bytesView(s string) []byte {
	if s == "" {
		return nil
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
