package http

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
)

// A panic on the forward-auth path answers 500 in the error envelope, is
// logged, and leaves the server up; other paths reach the net/http handler.
func TestHTTPServer_routesAndRecovers(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	rest := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusTeapot, map[string]string{"path": r.URL.Path, "ip": ClientIP(r)})
	})
	// A handler without a verifier panics on its first request.
	srv := newServer(NewVerifierHandler(nil), rest, log, "")
	if err := srv.Open("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	base := srv.URL()
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) (int, string) {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for range 2 {
		if code, body := get("/v1/authz"); code != 500 || !strings.Contains(body, `"code":"internal"`) {
			t.Fatalf("panicking authz: %d %s", code, body)
		}
	}
	if !strings.Contains(logs.String(), "panic serving request") {
		t.Fatalf("panic not logged: %s", logs.String())
	}
	if code, body := get("/v1/keys?x=1"); code != http.StatusTeapot || !strings.Contains(body, `"path":"/v1/keys"`) ||
		!strings.Contains(body, `"ip":"127.0.0.1"`) {
		t.Fatalf("other paths: %d %s", code, body)
	}
}

// Handlers behind the adaptor may keep request strings after they return
// (a KeyUsed event is published later): the next request on the same
// connection must not change them.
func TestHTTPServer_requestStringsOwned(t *testing.T) {
	type kept struct{ ua, path, query, ip string }
	var got []kept
	rest := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, kept{r.Header.Get("User-Agent"), r.URL.Path, r.URL.RawQuery, ClientIP(r)})
		w.WriteHeader(http.StatusNoContent)
	})
	srv := newServer(NewVerifierHandler(nil), rest, slog.New(slog.NewTextHandler(io.Discard, nil)), "")
	if err := srv.Open("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	client := &http.Client{Timeout: 5 * time.Second} // one keep-alive connection
	for i, s := range []string{"aaaaaaaa", "bbbbbbbb"} {
		req, _ := http.NewRequest("GET", srv.URL()+"/v1/"+s+"?q="+s, nil)
		req.Header.Set("User-Agent", "ua-"+s)
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.0.0.%d", i+1)) // from a loopback peer: believed
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	want := kept{"ua-aaaaaaaa", "/v1/aaaaaaaa", "q=aaaaaaaa", "10.0.0.1"}
	if len(got) != 2 || got[0] != want {
		t.Fatalf("kept %+v, want first %+v", got, want)
	}
}

// A server that stops serving by itself says so on Done and Err: that is
// what makes a node exit instead of lingering without HTTP.
func TestServer_stopReported(t *testing.T) {
	srv := newServer(nil, http.NotFoundHandler(), slog.New(slog.NewTextHandler(io.Discard, nil)), "")
	if err := srv.Open("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if srv.Err() != nil {
		t.Fatalf("Err while serving: %v", srv.Err())
	}
	srv.ln.(*retryListener).Listener.Close() // the accept loop loses its socket
	select {
	case <-srv.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the server never reported that it stopped")
	}
	if err := srv.Err(); err == nil || !strings.Contains(err.Error(), "stopped serving") {
		t.Fatalf("Err = %v, want why it stopped", err)
	}

	// Close is not a failure.
	srv2 := newServer(nil, http.NotFoundHandler(), slog.New(slog.NewTextHandler(io.Discard, nil)), "")
	if err := srv2.Open("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	<-srv2.Done()
	if err := srv2.Err(); err != nil {
		t.Fatalf("Err after Close = %v", err)
	}
}

// flakyListener fails its first accepts with errs, then accepts from
// the real listener.
type flakyListener struct {
	net.Listener
	errs []error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return l.Listener.Accept()
}

// Out of descriptors is a passing condition: accept is retried, the
// server keeps serving. Anything else still ends Accept.
func TestRetryListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	var logs bytes.Buffer
	rl := &retryListener{Listener: &flakyListener{Listener: ln, errs: []error{emfile, emfile}},
		log: slog.New(slog.NewTextHandler(&logs, nil)), closing: make(chan struct{})}
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Close()
		}
	}()
	c, err := rl.Accept()
	if err != nil {
		t.Fatalf("Accept after EMFILE: %v", err)
	}
	c.Close()
	if !strings.Contains(logs.String(), "accept failed; retrying") {
		t.Fatalf("the retry was not logged: %s", logs.String())
	}
	bad := &retryListener{Listener: &flakyListener{Listener: ln, errs: []error{errors.New("permanent")}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), closing: make(chan struct{})}
	if _, err := bad.Accept(); err == nil {
		t.Fatal("a permanent error was retried")
	}
}

// syncBuffer collects log output written by the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// No secret in any log line: requests fasthttp cannot read used to be
// logged with their raw bytes (an Authorization header, the admin token),
// and what fasthttp and its adaptor log on the server's behalf carries the
// request line. A real server on loopback gets such requests; its log must
// hold none of the secrets they carry.
func TestServer_logsNoSecrets(t *testing.T) {
	key, err := keyledger.DefaultFormat.New(keyledger.EnvLive, strings.NewReader(strings.Repeat("s", 4096)))
	if err != nil {
		t.Fatal(err)
	}
	const token = "kla_0123456789abcdef0123456789abcdef"
	logs := &syncBuffer{}
	srv := NewServer(RouterOptions{Token: token, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err := srv.Open("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	}()
	for _, tc := range []struct{ name, raw, logged string }{
		{"attack: a truncated request", "GET /v1/keys HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + key + "\r\nX-Token: " + token + "\r\n",
			"error when reading request headers"},
		{"attack: a header line without a colon", "GET /v1/keys HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + token + "\r\nAuthorization Bearer " + key + "\r\n\r\n",
			"missing colon"},
		{"attack: the admin token in a line without a colon", "GET /v1/keys HTTP/1.1\r\nHost: a\r\nX-Debug " + token + "\r\n\r\n",
			"missing colon"},
		{"attack: a bad method", "G\x01T /v1/keys?api_key=" + key + " HTTP/1.1\r\nAuthorization: Basic " + token + "\r\n\r\n",
			"unsupported http request method"},
		{"attack: a bad content length", "GET /v1/keys?api_key=" + key + " HTTP/1.1\r\nHost: a\r\nContent-Length: zz\r\nAuthorization: Bearer " + key + "\r\n\r\n",
			"content-length"},
		{"attack: a URI net/http cannot parse", "GET /v1/keys/%zz?api_key=" + key + " HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + token + "\r\n\r\n",
			"cannot parse requestURI"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(logs.String())
			c, err := net.Dial("tcp", srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.WriteString(c, tc.raw); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			resp, _ := io.ReadAll(c)
			if strings.Contains(string(resp), key) || strings.Contains(string(resp), token) {
				t.Fatalf("the answer carries a secret: %q", resp)
			}
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(logs.String()[before:], tc.logged) {
				if time.Now().After(deadline) {
					t.Fatalf("the server never logged %q; logs:\n%s", tc.logged, logs.String())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if l := logs.String()[before:]; strings.Contains(l, key) || strings.Contains(l, key[9:25]) || strings.Contains(l, token) {
				t.Fatalf("a secret is in the log:\n%s", l)
			}
		})
	}
}

// The scrubber of library log lines, case by case.
func TestScrubLogLine(t *testing.T) {
	const tok = "sekrit-admin-token-123"
	key := "fsk_live_OdQTOCTFHcsMURTIbMJeubMBSmrlYD1tzeqP"
	for _, tc := range []struct{ in, want string }{
		{"error: " + key, "error: REDACTED"},
		{`"Authorization: bearer abc.def"`, `"Authorization: bearer REDACTED"`},
		{`Basic dXNlcjpwYXNz\r\nHost`, `Basic REDACTED\r\nHost`},
		{"x " + tok + " y", "x REDACTED y"},
		{"no secret here", "no secret here"},
		{"Bearer ", "Bearer "},
		{strings.Repeat("a", 2000), strings.Repeat("a", maxLogLine) + "…(cut)"},
		{"bad \xff byte", "bad ? byte"},
	} {
		if got := scrubLogLine(tc.in, tok); got != tc.want {
			t.Errorf("scrubLogLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestServer_connectionCaps: past --max-conns-per-ip one client address
// gets a refusal for its next connection, while the connections it holds
// are still served. Without a cap one client could hold every descriptor
// the node has.
func TestServer_connectionCaps(t *testing.T) {
	rest := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"ok": "yes"})
	})
	srv := NewServer(RouterOptions{MaxConnsPerIP: 2})
	srv.fast.Handler = newServer(nil, rest, slog.New(slog.DiscardHandler), "").fast.Handler
	if err := srv.Open("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	}()
	addr := srv.Addr().String()
	request := func(c net.Conn) string {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("GET /x HTTP/1.1\r\nHost: k\r\n\r\n")); err != nil {
			return err.Error()
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err.Error()
		}
		return line
	}
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := request(c); !strings.Contains(got, " 200 ") {
			t.Fatalf("connection within the cap: %q", got)
		}
		held = append(held, c)
	}
	third, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if got := request(third); strings.Contains(got, " 200 ") {
		t.Fatalf("a third connection from one address was served: %q", got)
	}
	if got := request(held[0]); !strings.Contains(got, " 200 ") {
		t.Fatalf("a held connection stopped being served: %q", got)
	}
}
