package http

import (
	"net"
	"net/http"
	"net/netip"
	"strings"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/valyala/fasthttp"
)

// DefaultTrustedProxies are the peers whose forwarded headers are believed
// when none are configured: loopback only, i.e. a gateway on the same host.
var DefaultTrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}

// Bounds on what a forwarded header may make the handlers do.
const (
	// MaxTrustedProxies bounds --trusted-proxies: every request is checked
	// against each prefix.
	MaxTrustedProxies = 256
	// maxForwardedHops is how many X-Forwarded-For hops are walked from the
	// right. A chain of more trusted proxies than this is not a real
	// deployment; the walk stops at the last hop it examined.
	maxForwardedHops = 32
	// maxIPText bounds one forwarded address: the longest IPv6 text with
	// a zone and a port is well under it.
	maxIPText = 64
)

// ParseTrustedProxies parses the value of --trusted-proxies: CIDR prefixes
// (10.0.0.0/8, 2001:db8::/32) or single addresses, comma-separated; "" or
// "none" trusts no proxy at all (every forwarded header is ignored). The
// result is never nil, so that it never means DefaultTrustedProxies.
func ParseTrustedProxies(s string) ([]netip.Prefix, error) {
	out := []netip.Prefix{}
	if t := strings.TrimSpace(s); t == "" || t == "none" {
		return out, nil
	}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		var p netip.Prefix
		var err error
		if strings.Contains(f, "/") {
			p, err = netip.ParsePrefix(f)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(f); err == nil && a.Zone() == "" {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil || !p.IsValid() {
			return nil, keyledger.Errorf(keyledger.Invalid,
				"%s is not a CIDR prefix such as 10.0.0.0/8 or fd00::/8, nor an IP address (give a comma-separated list, or none)", keyledger.Quote(f))
		}
		out = append(out, normalizePrefix(p))
		if len(out) > MaxTrustedProxies {
			return nil, keyledger.Errorf(keyledger.Invalid, "at most %d trusted proxy prefixes; merge them into wider ones", MaxTrustedProxies)
		}
	}
	return out, nil
}

// normalizePrefix masks p's host bits and turns an IPv4-mapped IPv6
// prefix (::ffff:10.0.0.0/104) into the IPv4 one, since peers and
// forwarded addresses are compared unmapped.
func normalizePrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// proxySet is the set of peers whose forwarded headers the handlers
// believe. Anyone else's are the client's own word: a client that can
// reach a node directly must not choose the IP, method or path its usage
// records and audit events carry.
type proxySet struct {
	prefixes []netip.Prefix
}

// newProxySet compiles trusted; nil means DefaultTrustedProxies, empty
// means nobody.
func newProxySet(trusted []netip.Prefix) *proxySet {
	if trusted == nil {
		trusted = DefaultTrustedProxies
	}
	s := &proxySet{prefixes: make([]netip.Prefix, 0, len(trusted))}
	for _, p := range trusted {
		if p.IsValid() {
			s.prefixes = append(s.prefixes, normalizePrefix(p))
		}
	}
	return s
}

// trusts reports whether a (an unmapped address without zone) is a
// trusted proxy.
func (s *proxySet) trusts(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range s.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseIP parses one forwarded address: an IP, or an IP with a port
// (1.2.3.4:5, [2001:db8::1]:5) or in brackets, as some proxies write them.
// Anything else (a name, "unknown", an obfuscated RFC 7239 identifier) is
// not an address. The result is unmapped and without zone: that is how
// it is compared and recorded.
func parseIP(s string) (netip.Addr, bool) {
	if len(s) == 0 || len(s) > maxIPText {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		var ap netip.AddrPort
		switch {
		case s[0] == '[' && s[len(s)-1] == ']':
			a, err = netip.ParseAddr(s[1 : len(s)-1])
		case strings.IndexByte(s, ':') >= 0:
			if ap, err = netip.ParseAddrPort(s); err == nil {
				a = ap.Addr()
			}
		}
		if err != nil {
			return netip.Addr{}, false
		}
	}
	return a.Unmap().WithZone(""), true
}

// hopWalk finds the client in X-Forwarded-For: walking from the right,
// the first hop that is not a trusted proxy. Each proxy appends the
// address it saw, so everything to the left of the last untrusted hop was
// written by the client itself and proves nothing (the leftmost hop is the
// one a client chooses). Call line for the header's lines from the last to
// the first.
type hopWalk struct {
	set    *proxySet
	hops   int
	client netip.Addr
	text   string // client as the header spells it
	done   bool   // the client is found, or the walk must stop
	bad    bool   // a hop is not an address: the header is ignored
}

func (w *hopWalk) line(v string) {
	for !w.done {
		i := strings.LastIndexByte(v, ',')
		if hop := strings.TrimSpace(v[i+1:]); hop != "" { // empty list elements are allowed (RFC 9110 5.6.1)
			a, ok := parseIP(hop)
			if !ok {
				w.bad, w.done = true, true
				return
			}
			w.client, w.text = a, hop
			w.hops++
			if !w.set.trusts(a) || w.hops >= maxForwardedHops {
				w.done = true
				return
			}
		}
		if i < 0 {
			return
		}
		v = v[:i]
	}
}

// result is the client the walk found, if X-Forwarded-For named one that
// can be believed.
func (w *hopWalk) result() (netip.Addr, bool) {
	if w.bad || !w.client.IsValid() {
		return netip.Addr{}, false
	}
	return w.client, true
}

// One of a header's values: set when given exactly once, else absent
// (never sent, or sent empty) or ambiguous (sent more than once: a proxy
// that sets the header would have replaced a copy the client sent, so two
// copies mean one of them is the client's).
type single struct {
	v         string
	ambiguous bool
}

func singleOf(vs []string) single {
	switch len(vs) {
	case 0:
		return single{}
	case 1:
		return single{v: vs[0]}
	}
	return single{ambiguous: true}
}

// pickForwarded chooses between the two spellings gateways use for the
// same thing (X-Forwarded-Method / X-Original-Method, X-Forwarded-Uri /
// X-Original-Uri). A gateway sets one of them and passes the client's
// headers through, so when both are set and disagree, or either is
// ambiguous, one of them is the client's and neither is believed.
func pickForwarded(fwd, orig single) (string, bool) {
	switch {
	case fwd.ambiguous || orig.ambiguous:
		return "", false
	case fwd.v != "" && orig.v != "" && fwd.v != orig.v:
		return "", false
	case fwd.v != "":
		return fwd.v, true
	case orig.v != "":
		return orig.v, true
	}
	return "", false
}

// isMethod reports whether m is an HTTP method token of recordable length.
func isMethod(m string) bool {
	if len(m) == 0 || len(m) > events.MaxUsedMethodLen {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// canonicalIP is a's canonical text, the one spelling every record of
// the same address shares (analytics groups by it): text itself, without
// allocating, when that is how text already spells it.
func canonicalIP(a netip.Addr, text string) string {
	var buf [maxIPText]byte
	b := a.AppendTo(buf[:0])
	if string(b) == text {
		return text
	}
	return string(b)
}

// origin is what a forward-auth request says about the request being
// authorized: who sent it, with which method, to which path. For net/http.
type origin struct {
	ip, method, path string
}

// clientIP is the caller of r: the client a trusted proxy names, else
// the TCP peer.
func (s *proxySet) clientIP(r *http.Request) string {
	ip, _ := s.client(r)
	return ip
}

// client is clientIP, and whether r came from a trusted proxy.
func (s *proxySet) client(r *http.Request) (ip string, trusted bool) {
	peer, peerText, ok := peerOf(r.RemoteAddr)
	if !ok || !s.trusts(peer) {
		return peerText, false
	}
	if a, text, ok := s.forwardedIP(r.Header["X-Forwarded-For"], r.Header["X-Real-Ip"]); ok {
		return canonicalIP(a, text), true
	}
	return peerText, true
}

// forwardedIP is the client that a trusted peer's headers name, and the
// text it was given as: the X-Forwarded-For walk when that header is
// there (if a hop does not parse, nothing), else a single X-Real-IP.
func (s *proxySet) forwardedIP(xff, realIP []string) (netip.Addr, string, bool) {
	if len(xff) > 0 {
		w := hopWalk{set: s}
		for i := len(xff) - 1; i >= 0 && !w.done; i-- {
			w.line(xff[i])
		}
		if a, ok := w.result(); ok || w.bad {
			return a, w.text, ok
		}
		// Only empty X-Forwarded-For values: as if there were none.
	}
	if v := singleOf(realIP); v.v != "" {
		t := strings.TrimSpace(v.v)
		a, ok := parseIP(t)
		return a, t, ok
	}
	return netip.Addr{}, "", false
}

// peerOf parses a net/http RemoteAddr ("ip:port"). text is what is
// recorded for the peer: its canonical address, or RemoteAddr's host (or
// RemoteAddr as it is) when that is not an address.
func peerOf(remote string) (a netip.Addr, text string, ok bool) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return netip.Addr{}, remote, false
	}
	if a, err = netip.ParseAddr(host); err != nil {
		return netip.Addr{}, host, false
	}
	a = a.Unmap().WithZone("")
	return a, canonicalIP(a, host), true
}

// originOf is what r, a forward-auth request, says about the request being
// authorized. A trusted proxy's headers are believed; anyone else gets
// their own address, method and path recorded. Key-shaped parts of the
// path are redacted (see redactPath).
func (s *proxySet) originOf(r *http.Request) origin {
	var o origin
	var trusted bool
	o.ip, trusted = s.client(r)
	o.method = r.Method
	if trusted {
		if m, ok := pickForwarded(singleOf(r.Header["X-Forwarded-Method"]), singleOf(r.Header["X-Original-Method"])); ok && isMethod(m) {
			o.method = m
		}
		if p, ok := pickForwarded(singleOf(r.Header["X-Forwarded-Uri"]), singleOf(r.Header["X-Original-Uri"])); ok {
			o.path = p
		}
	}
	if o.path == "" {
		// Built only when no gateway header names the path: it allocates.
		o.path = authzPath(r.URL.RequestURI())
	}
	o.path = redactPath(o.path)
	return o
}

// fastOrigin is origin for the fasthttp endpoint: views into fasthttp's
// memory (valid until the handler returns) and the client address.
type fastOrigin struct {
	ip        netip.Addr // valid unless ipText is set
	ipText    string     // a peer that is not a TCP address, as fasthttp prints it
	method    []byte
	path      []byte // unless ownedPath is set
	ownedPath string // the path redacted: a string of its own
}

// fastOriginOf is originOf for fasthttp. It allocates nothing unless a
// path holds something key-shaped or the peer is not a TCP address.
func (s *proxySet) fastOriginOf(ctx *fasthttp.RequestCtx) fastOrigin {
	var o fastOrigin
	trusted := false
	if tcp, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(tcp.IP); ok {
			o.ip = a.Unmap()
			trusted = s.trusts(o.ip)
		}
	}
	if !o.ip.IsValid() {
		o.ipText = ctx.RemoteAddr().String()
	}
	o.method = ctx.Method()
	if trusted {
		hdr := &ctx.Request.Header
		// PeekAll's result is overwritten by the next Peek: each is used
		// up before the next call.
		w := hopWalk{set: s}
		xff := hdr.PeekAll("X-Forwarded-For")
		for i := len(xff) - 1; i >= 0 && !w.done; i-- {
			w.line(unsafeString(xff[i]))
		}
		if a, ok := w.result(); ok {
			o.ip = a
		} else if !w.bad {
			if v := fastSingle(hdr, "X-Real-Ip"); v.v != "" {
				if a, ok := parseIP(strings.TrimSpace(v.v)); ok {
					o.ip = a
				}
			}
		}
		if m, ok := pickForwarded(fastSingle(hdr, "X-Forwarded-Method"), fastSingle(hdr, "X-Original-Method")); ok && isMethod(m) {
			o.method = bytesView(m)
		}
		if p, ok := pickForwarded(fastSingle(hdr, "X-Forwarded-Uri"), fastSingle(hdr, "X-Original-Uri")); ok {
			o.path = bytesView(p)
		}
	}
	if len(o.path) == 0 {
		o.path = bytesView(authzPath(unsafeString(ctx.RequestURI())))
	}
	if pathHoldsSecret(unsafeString(o.path)) {
		o.ownedPath, o.path = redactPath(unsafeString(o.path)), nil
	}
	return o
}

// fastSingle is singleOf for a fasthttp header.
func fastSingle(hdr *fasthttp.RequestHeader, key string) single {
	vs := hdr.PeekAll(key)
	switch len(vs) {
	case 0:
		return single{}
	case 1:
		return single{v: unsafeString(vs[0])}
	}
	return single{ambiguous: true}
}
