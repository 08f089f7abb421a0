package keyledger

import "strings"

// ReasonExposedSecret refines invalid_request: the request carried a value
// shaped like an API key secret where no secret belongs (a URL path or
// query of the admin API). The answer never repeats the value, and the
// key should be treated as exposed: URLs end up in proxy and access logs
// and browser histories.
const ReasonExposedSecret = "exposed_secret"

// MinSecretShapeLen is how many base62 characters after "_live_" or
// "_test_" make a value look like a secret. keyledger's keys have 36 or
// more; a truncated paste of 16 (95 bits) is still too much of a secret to
// keep or repeat, while words such as "cache_test_run" stay clear of it.
const MinSecretShapeLen = 16

// FindSecret returns the bounds s[start:end] of the first token in s shaped
// like an API key secret of the scheme keyledger issues: a run of letters
// and digits (the product prefix, any prefix: imported keys such as
// Stripe's share the scheme), "_live_" or "_test_", and at least
// MinSecretShapeLen base62 characters. The checksum is deliberately not
// required: a mistyped or truncated key is as exposed as a valid one.
// FindSecret allocates nothing, so the verifier's hot path can run it on
// every forwarded path.
func FindSecret(s string) (start, end int, ok bool) {
	const markerLen = len("_live_")
	for i := 0; i+markerLen+MinSecretShapeLen <= len(s); {
		j := strings.IndexByte(s[i:], '_')
		if j < 0 {
			break
		}
		j += i
		if len(s)-j < markerLen+MinSecretShapeLen {
			break
		}
		if m := s[j : j+markerLen]; m == "_live_" || m == "_test_" {
			end := j + markerLen
			for end < len(s) && isBase62(s[end]) {
				end++
			}
			if end-(j+markerLen) >= MinSecretShapeLen {
				start := j
				for start > 0 && isBase62(s[start-1]) {
					start--
				}
				return start, end, true
			}
		}
		i = j + 1
	}
	return 0, 0, false
}

// RedactSecrets returns s with every token FindSecret finds replaced by
// with: for paths, URLs and messages that may carry a key.
func RedactSecrets(s, with string) string {
	start, end, ok := FindSecret(s)
	if !ok {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for ok {
		b.WriteString(s[:start])
		b.WriteString(with)
		s = s[end:]
		start, end, ok = FindSecret(s)
	}
	b.WriteString(s)
	return b.String()
}

// LooksLikeSecret reports whether s holds a token shaped like an API key
// secret (see FindSecret) anywhere in it.
func LooksLikeSecret(s string) bool {
	_, _, ok := FindSecret(s)
	return ok
}

func isBase62(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z'
}
