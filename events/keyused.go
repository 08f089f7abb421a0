package events

import (
	"bytes"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends the JSON form of e to b. Verifier nodes encode one of
// these per request, so it is written by hand: several times faster than
// encoding/json, with one allocation at most (b growing).
func (e *KeyUsed) AppendJSON(b []byte) []byte {
	b = append(b, `{"type":"KeyUsed","v":1,"event_id":`...)
	b = appendString(b, e.EventID)
	b = append(b, `,"at":"`...)
	b = e.At.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","key_id":`...)
	b = appendString(b, e.KeyID)
	b = append(b, `,"environment":"`...)
	b = append(b, e.Environment.String()...)
	b = append(b, `","outcome":"`...)
	b = append(b, e.Outcome.String()...)
	b = append(b, `","permission":`...)
	b = appendString(b, e.Permission)
	b = append(b, `,"ip":`...)
	b = appendString(b, e.IP)
	b = append(b, `,"user_agent":`...)
	b = appendString(b, e.UserAgent)
	b = append(b, `,"method":`...)
	b = appendString(b, e.Method)
	b = append(b, `,"path":`...)
	b = appendString(b, e.Path)
	b = append(b, `,"node":`...)
	b = appendString(b, e.Node)
	b = append(b, `,"latency_us":`...)
	b = strconv.AppendInt(b, e.LatencyUS, 10)
	return append(b, '}')
}

// Bounds, in bytes, of the fields of a KeyUsed event that come from the
// client (through its gateway). Every verification is recorded: without
// bounds, a 30 KB User-Agent would be stored 30 KB at a time in USAGE and
// ClickHouse.
const (
	MaxUsedPermissionLen = 128
	MaxUsedIPLen         = 64
	MaxUsedUserAgentLen  = 512
	MaxUsedMethodLen     = 16
	MaxUsedPathLen       = 1024
)

// Clip cuts the client-supplied fields of e to their bounds, each at a
// UTF-8 character boundary. Publishers call it before encoding.
func (e *KeyUsed) Clip() {
	e.Permission = Clip(e.Permission, MaxUsedPermissionLen)
	e.IP = Clip(e.IP, MaxUsedIPLen)
	e.UserAgent = Clip(e.UserAgent, MaxUsedUserAgentLen)
	e.Method = Clip(e.Method, MaxUsedMethodLen)
	e.Path = Clip(e.Path, MaxUsedPathLen)
}

// Clip returns s cut to at most n bytes, at a UTF-8 character boundary.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// A USAGE message holds one KeyUsed event or a batch of them: events in
// their JSON form, each followed by a newline. A newline cannot occur
// inside an event (strings escape it), so it separates them unambiguously.

// AppendUsage appends e to a batch being built in b.
func AppendUsage(b []byte, e *KeyUsed) []byte {
	return append(e.AppendJSON(b), '\n')
}

// NextUsage splits the first event off a USAGE message: it returns that
// event's bytes and the rest of the message, empty after the last event.
// Blank lines are skipped; a message without newlines is one event.
func NextUsage(data []byte) (event, rest []byte) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			event, data = data, nil
		} else {
			event, data = data[:i], data[i+1:]
		}
		if len(bytes.TrimSpace(event)) > 0 {
			return event, data
		}
	}
	return nil, nil
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// with encoding/json, so a hostile User-Agent cannot break the event.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
