package analytics

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/google/uuid"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
)

// usageRow is one KeyUsed event as it is stored in usage_events.
type usageRow struct {
	eventID    uuid.UUID
	sec        int64 // unix seconds of at
	ms         uint16
	keyID      string
	env        string
	outcome    string
	permission string
	ip         string
	userAgent  string
	method     string
	path       string
	node       string
	latencyUS  int64
}

// minSec and maxSec bound the instants a ClickHouse DateTime can hold.
var (
	minSec int64 = 0
	maxSec int64 = 1<<32 - 1
)

// decodeKeyUsed decodes a USAGE message into r. It accepts exactly what
// events.Decode accepts: a hand-written fast path handles the canonical
// encoding (the one (*events.KeyUsed).AppendJSON writes) and anything it is
// not sure about (escapes, time offsets, odd numbers, case-folded keys) goes
// to events.Decode, which is the authority on validity and error messages.
func decodeKeyUsed(data []byte, r *usageRow) error {
	// The message's bytes are never modified: strings of the row may
	// point into them without a copy.
	if len(data) > 0 && utf8.Valid(data) && fastKeyUsed(unsafe.String(&data[0], len(data)), r) {
		return nil
	}
	ev, err := events.Decode(data)
	if err != nil {
		return err
	}
	ku, ok := ev.(*events.KeyUsed)
	if !ok {
		return fmt.Errorf("a %s event does not belong on the %s stream", ev.Head().Type, nats.UsageStream)
	}
	at := ku.At.UTC()
	sec := at.Unix()
	if sec < minSec || sec > maxSec {
		return fmt.Errorf("at %s is outside the storable range (1970 to 2106)", at.Format(time.RFC3339))
	}
	eid, err := uuid.Parse(ku.EventID)
	if err != nil {
		return fmt.Errorf("event_id must be a UUID")
	}
	*r = usageRow{
		eventID:    eid,
		sec:        sec,
		ms:         uint16(at.Nanosecond() / 1e6),
		keyID:      ku.KeyID,
		env:        ku.Environment.String(),
		outcome:    ku.Outcome.String(),
		permission: ku.Permission,
		ip:         ku.IP,
		userAgent:  ku.UserAgent,
		method:     ku.Method,
		path:       ku.Path,
		node:       ku.Node,
		latencyUS:  ku.LatencyUS,
	}
	return nil
}

// knownKeys are the JSON keys of a KeyUsed event (and its header).
// encoding/json matches keys case-insensitively, so an unknown key that
// folds to one of these must go to the slow path.
var knownKeys = []string{"type", "v", "event_id", "at", "actor", "key_id", "environment", "outcome",
	"permission", "ip", "user_agent", "method", "path", "node", "latency_us"}

// fastKeyUsed parses and validates s, which must be valid UTF-8. It reports
// false whenever it cannot vouch for the result; the caller then decodes
// with events.Decode. Strings in r are substrings of s: no allocation.
func fastKeyUsed(s string, r *usageRow) bool {
	p := parser{s: s}
	*r = usageRow{}
	var (
		typ, eventID, at       string
		v                      int64
		haveV, haveAt, haveEnv bool
		haveOutcome            bool
	)
	p.ws()
	if !p.eat('{') {
		return false
	}
	p.ws()
	if p.eat('}') {
		return false
	}
	for {
		p.ws()
		key, ok := p.str()
		if !ok {
			return false
		}
		p.ws()
		if !p.eat(':') {
			return false
		}
		p.ws()
		switch key {
		case "type":
			typ, ok = p.strOrNull()
		case "v":
			v, ok = p.int()
			haveV = true
		case "event_id":
			eventID, ok = p.strOrNull()
		case "at":
			at, ok = p.str()
			haveAt = true
		case "actor":
			_, ok = p.strOrNull()
		case "key_id":
			r.keyID, ok = p.strOrNull()
		case "environment":
			r.env, ok = p.str()
			haveEnv = true
		case "outcome":
			r.outcome, ok = p.strOrNull()
			haveOutcome = true
		case "permission":
			r.permission, ok = p.strOrNull()
		case "ip":
			r.ip, ok = p.strOrNull()
		case "user_agent":
			r.userAgent, ok = p.strOrNull()
		case "method":
			r.method, ok = p.strOrNull()
		case "path":
			r.path, ok = p.strOrNull()
		case "node":
			r.node, ok = p.strOrNull()
		case "latency_us":
			r.latencyUS, ok = p.int()
		default:
			for _, k := range knownKeys {
				if strings.EqualFold(k, key) {
					return false
				}
			}
			ok = p.skip(0)
		}
		if !ok {
			return false
		}
		p.ws()
		if p.eat('}') {
			break
		}
		if !p.eat(',') {
			return false
		}
	}
	p.ws()
	if p.i != len(s) {
		return false
	}
	// Validation, as events.Decode and events.Validate do it.
	if typ != string(events.TypeKeyUsed) || !haveV || v != events.Version || !haveAt || !haveEnv || !haveOutcome {
		return false
	}
	if r.env != "live" && r.env != "test" {
		return false
	}
	if _, ok := keyledger.ParseOutcome(r.outcome); !ok {
		return false
	}
	if r.keyID != "" && events.ValidKeyID(r.keyID) != nil {
		return false
	}
	if len(eventID) != 36 {
		return false // other spellings uuid.Parse accepts go the slow way
	}
	id, err := uuid.Parse(eventID)
	if err != nil {
		return false
	}
	r.eventID = id
	sec, ns, ok := parseUTC(at)
	if !ok || sec < minSec || sec > maxSec {
		return false
	}
	r.sec, r.ms = sec, uint16(ns/1e6)
	return true
}

// parser is a minimal JSON scanner over a string.
type parser struct {
	s string
	i int
}

func (p *parser) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) eat(c byte) bool {
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a string without escapes or control characters.
func (p *parser) str() (string, bool) {
	if !p.eat('"') {
		return "", false
	}
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == '"' {
			v := p.s[start:p.i]
			p.i++
			return v, true
		}
		if c == '\\' || c < 0x20 {
			return "", false
		}
		p.i++
	}
	return "", false
}

// strOrNull reads a string or null ("" — encoding/json leaves the field as is).
func (p *parser) strOrNull() (string, bool) {
	if strings.HasPrefix(p.s[p.i:], "null") {
		p.i += 4
		return "", true
	}
	return p.str()
}

// int reads an integer: optional minus, digits, no leading zeros, no
// fraction or exponent (encoding/json rejects those for int fields).
func (p *parser) int() (int64, bool) {
	neg := p.eat('-')
	start := p.i
	var n int64
	for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
		if p.i-start >= 18 {
			return 0, false
		}
		n = n*10 + int64(p.s[p.i]-'0')
		p.i++
	}
	digits := p.i - start
	if digits == 0 || (digits > 1 && p.s[start] == '0') {
		return 0, false
	}
	if p.i < len(p.s) {
		switch p.s[p.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	if neg {
		n = -n
	}
	return n, true
}

// skip skips any JSON value of an unknown field. It is strict: it never
// accepts what encoding/json refuses, since nothing revalidates the
// document after the fast path.
func (p *parser) skip(depth int) bool {
	if depth > 64 || p.i >= len(p.s) {
		return false
	}
	switch c := p.s[p.i]; {
	case c == '"':
		_, ok := p.str()
		return ok
	case c == '{' || c == '[':
		close := byte('}')
		if c == '[' {
			close = ']'
		}
		p.i++
		p.ws()
		if p.eat(close) {
			return true
		}
		for {
			p.ws()
			if c == '{' {
				if _, ok := p.str(); !ok {
					return false
				}
				p.ws()
				if !p.eat(':') {
					return false
				}
				p.ws()
			}
			if !p.skip(depth + 1) {
				return false
			}
			p.ws()
			if p.eat(close) {
				return true
			}
			if !p.eat(',') {
				return false
			}
		}
	case c == 't':
		return p.lit("true")
	case c == 'f':
		return p.lit("false")
	case c == 'n':
		return p.lit("null")
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	}
	return false
}

func (p *parser) lit(w string) bool {
	if strings.HasPrefix(p.s[p.i:], w) {
		p.i += len(w)
		return true
	}
	return false
}

// number skips a JSON number, strictly.
func (p *parser) number() bool {
	p.eat('-')
	digits := func() int {
		n := 0
		for p.i < len(p.s) && p.s[p.i] >= '0' && p.s[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	start := p.i
	n := digits()
	if n == 0 || (n > 1 && p.s[start] == '0') {
		return false
	}
	if p.eat('.') && digits() == 0 {
		return false
	}
	if p.eat('e') || p.eat('E') {
		if !p.eat('+') {
			p.eat('-')
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}

// parseUTC parses the canonical form "2006-01-02T15:04:05[.fraction]Z".
// Other RFC 3339 forms (offsets) report false and take the slow path.
func parseUTC(s string) (sec int64, nsec int, ok bool) {
	if len(s) < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[len(s)-1] != 'Z' {
		return 0, 0, false
	}
	num := func(a, b int) (int, bool) {
		n := 0
		for i := a; i < b; i++ {
			c := s[i]
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	year, ok1 := num(0, 4)
	month, ok2 := num(5, 7)
	day, ok3 := num(8, 10)
	hour, ok4 := num(11, 13)
	minute, ok5 := num(14, 16)
	second, ok6 := num(17, 19)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) {
		return 0, 0, false
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || second > 59 {
		return 0, 0, false
	}
	rest := s[19 : len(s)-1]
	if rest != "" {
		if rest[0] != '.' || len(rest) < 2 || len(rest) > 10 {
			return 0, 0, false
		}
		frac, ok := num(20, 19+len(rest))
		if !ok {
			return 0, 0, false
		}
		for i := len(rest) - 1; i < 9; i++ {
			frac *= 10
		}
		nsec = frac
	}
	t := time.Date(year, time.Month(month), day, hour, minute, second, nsec, time.UTC)
	return t.Unix(), nsec, true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
