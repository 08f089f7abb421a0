package console

import (
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestSessions(c *clock) *sessions {
	return newSessions(c.now, rand.NewChaCha8([32]byte{1}), 15*time.Minute, 8*time.Hour)
}

func withCookie(value string) *http.Request {
	r, _ := http.NewRequest("GET", "/console/keys", nil)
	r.AddCookie(&http.Cookie{Name: SessionCookie, Value: value})
	return r
}

func TestSessions(t *testing.T) {
	t.Run("idle timeout", func(t *testing.T) {
		c := &clock{time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
		s := newTestSessions(c)
		_, v := s.create("admin-token", "", "")
		c.t = c.t.Add(14 * time.Minute)
		if _, ok := s.get(withCookie(v)); !ok {
			t.Fatal("ended before the idle timeout")
		}
		c.t = c.t.Add(14 * time.Minute) // used 14 min ago: still live
		if _, ok := s.get(withCookie(v)); !ok {
			t.Fatal("use did not extend the session")
		}
		c.t = c.t.Add(15 * time.Minute)
		if _, ok := s.get(withCookie(v)); ok {
			t.Fatal("alive after 15 idle minutes")
		}
	})
	t.Run("max age", func(t *testing.T) {
		c := &clock{time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
		s := newTestSessions(c)
		_, v := s.create("admin-token", "", "")
		for i := 0; i < 8*6; i++ { // used every 10 minutes
			c.t = c.t.Add(10 * time.Minute)
			_, ok := s.get(withCookie(v))
			if want := c.t.Sub(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)) < 8*time.Hour; ok != want {
				t.Fatalf("at %v: live %v, want %v", c.t, ok, want)
			}
		}
	})
	t.Run("unknown and empty cookies", func(t *testing.T) {
		s := newTestSessions(&clock{time.Now()})
		for _, v := range []string{"", "x", strings.Repeat("A", 43)} {
			if _, ok := s.get(withCookie(v)); ok {
				t.Fatalf("cookie %q opened a session", v)
			}
		}
	})
	t.Run("only the cookie's hash is kept", func(t *testing.T) {
		s := newTestSessions(&clock{time.Now()})
		ses, v := s.create("admin-token", "", "")
		for k := range s.m {
			if strings.Contains(string(k[:]), v) || ses.CSRF == v {
				t.Fatal("the cookie value is stored")
			}
		}
	})
	t.Run("a full table ends the session idle longest", func(t *testing.T) {
		c := &clock{time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
		s := newTestSessions(c)
		_, first := s.create("a", "", "")
		var last string
		for i := 1; i < MaxSessions; i++ {
			c.t = c.t.Add(time.Millisecond)
			_, last = s.create("a", "", "")
		}
		c.t = c.t.Add(time.Millisecond)
		s.create("a", "", "")
		if len(s.m) != MaxSessions {
			t.Fatalf("%d sessions", len(s.m))
		}
		if _, ok := s.get(withCookie(first)); ok {
			t.Fatal("the oldest session survived")
		}
		if _, ok := s.get(withCookie(last)); !ok {
			t.Fatal("a recent session was ended")
		}
	})
	t.Run("one-time forms", func(t *testing.T) {
		s := newTestSessions(&clock{time.Now()})
		ses, _ := s.create("a", "", "")
		n := s.newForm(ses)
		if _, ok := s.useForm(ses, "never-issued"); ok {
			t.Fatal("an unknown nonce was accepted")
		}
		if _, ok := s.useForm(ses, n); !ok {
			t.Fatal("a fresh nonce was refused")
		}
		if _, ok := s.useForm(ses, n); ok {
			t.Fatal("a nonce in use was accepted twice")
		}
		s.formFailed(ses, n)
		if _, ok := s.useForm(ses, n); !ok {
			t.Fatal("a failed form could not be sent again")
		}
		s.formMade(ses, n, "key_1")
		if prev, ok := s.useForm(ses, n); ok || prev != "key_1" {
			t.Fatalf("a used nonce: ok %v, prev %q", ok, prev)
		}
	})
}
