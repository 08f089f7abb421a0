package nats_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/nats/natstest"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// denied runs a request that the server must refuse: it fails (the server
// answers a permissions violation and no responder ever replies) within a
// short deadline.
func denied(t *testing.T, what string, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := f(ctx); err == nil {
		t.Fatalf("%s: allowed", what)
	}
}

// keysIntact checks, as the operator, that KEYS still holds n events from
// sequence 1 with its ledger configuration.
func keysIntact(t *testing.T, e *natstest.Env, n uint64) {
	t.Helper()
	s, err := e.JS.Stream(context.Background(), nats.KeysStream)
	if err != nil {
		t.Fatalf("KEYS is gone: %v", err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != n || info.State.FirstSeq != 1 || info.Config.MaxMsgs != -1 || info.Config.MaxAge != 0 {
		t.Fatalf("KEYS changed: msgs %d first %d max_msgs %d max_age %v", info.State.Msgs, info.State.FirstSeq, info.Config.MaxMsgs, info.Config.MaxAge)
	}
}

// TestBusRefuses is the attack of a process that reaches the NATS port,
// or holds one role's credentials, on the ledger. Before authentication
// and per-role permissions, every step below succeeded.
func TestBusRefuses(t *testing.T) {
	e := natstest.MustStartIn(t, t.TempDir(), "127.0.0.1:0")
	ids := eventstest.NewIDs(1)
	log := e.MustLog(t)
	if _, err := log.Append(context.Background(), eventstest.Created(t, ids, "key_a"), 0); err != nil {
		t.Fatal(err)
	}
	url := e.Server.ClientURL()

	t.Run("anonymous clients", func(t *testing.T) {
		if nc, err := natsgo.Connect(url, natsgo.MaxReconnects(0), natsgo.Timeout(time.Second)); err == nil {
			nc.Close()
			t.Fatal("an anonymous TCP client was accepted")
		} else if !errors.Is(err, natsgo.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Fatalf("anonymous connect: %v, want an authorization violation", err)
		}
		// (An anonymous in-process client is refused too, but nats.go
		// notices only after a 10 s read timeout: code in the process
		// is no attacker to defend against anyway.)
		// A key pair the fleet does not list is no better.
		stranger := natstest.MustFleetIdentity(t, "stranger")
		if nc, err := natsgo.Connect(url, append(stranger.Options(), natsgo.MaxReconnects(0), natsgo.Timeout(time.Second))...); err == nil {
			nc.Close()
			t.Fatal("an nkey outside the fleet was accepted")
		} else if !errors.Is(err, natsgo.ErrAuthorization) {
			t.Fatalf("stranger connect: %v, want an authorization violation", err)
		}
	})

	for _, who := range []string{natstest.Verifier, natstest.Analytics, natstest.Admin} {
		t.Run(who, func(t *testing.T) {
			nc, js := e.ConnectAs(t, who)
			if who != natstest.Admin {
				denied(t, "publishing a ledger event", func(ctx context.Context) error {
					_, err := js.Publish(ctx, nats.KeySubject("key_evil"), eventstest.MustEncode(t, eventstest.Created(t, ids, "key_evil")))
					return err
				})
			}
			denied(t, "deleting KEYS", func(ctx context.Context) error { return js.DeleteStream(ctx, nats.KeysStream) })
			denied(t, "cutting KEYS' history with a limits update", func(ctx context.Context) error {
				cfg := nats.KeysStreamConfig(nats.StreamConfig{})
				cfg.MaxMsgs = 1
				_, err := js.UpdateStream(ctx, cfg)
				return err
			})
			denied(t, "purging KEYS", func(ctx context.Context) error {
				_, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+nats.KeysStream, nil)
				return err
			})
			denied(t, "deleting a message", func(ctx context.Context) error {
				_, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.DELETE."+nats.KeysStream, []byte(`{"seq":1}`))
				return err
			})
			denied(t, "deleting a consumer", func(ctx context.Context) error {
				return js.DeleteConsumer(ctx, nats.KeysStream, nats.AnalyticsKeysDurable)
			})
			if who != natstest.Analytics && who != natstest.Admin {
				denied(t, "taking over the analytics durable", func(ctx context.Context) error {
					_, err := js.CreateOrUpdateConsumer(ctx, nats.KeysStream, jetstream.ConsumerConfig{Durable: nats.AnalyticsKeysDurable})
					return err
				})
				t.Run("publishing an alert", func(t *testing.T) {
					got := make(chan *natsgo.Msg, 1)
					sub, err := e.Conn.ChanSubscribe(nats.AlertSubjectPrefix+">", got)
					if err != nil {
						t.Fatal(err)
					}
					defer sub.Unsubscribe()
					if err := e.Conn.Flush(); err != nil {
						t.Fatal(err)
					}
					if err := nc.Publish(nats.AlertSubjectPrefix+"new_ip", []byte(`{}`)); err != nil {
						t.Fatal(err)
					}
					// Both round trips done, a delivered message would be
					// in the channel: the server handles a connection's
					// messages in order.
					if err := nc.Flush(); err != nil {
						t.Fatal(err)
					}
					if err := e.Conn.Flush(); err != nil {
						t.Fatal(err)
					}
					select {
					case <-got:
						t.Fatal("a forged alert was delivered")
					default:
					}
				})
			}
			if who == natstest.Verifier {
				denied(t, "publishing another node's usage", func(ctx context.Context) error {
					_, err := js.Publish(ctx, nats.UsageBatchSubject(keyledger.EnvLive, natstest.Verifier2), []byte("x"))
					return err
				})
				// What a verifier must still do.
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, err := js.Publish(ctx, nats.UsageBatchSubject(keyledger.EnvLive, natstest.Verifier), []byte("x")); err != nil {
					t.Fatalf("a verifier cannot publish its own usage: %v", err)
				}
				s, err := js.Stream(ctx, nats.KeysStream)
				if err != nil {
					t.Fatalf("a verifier cannot see KEYS: %v", err)
				}
				c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
				if err != nil {
					t.Fatalf("a verifier cannot follow KEYS: %v", err)
				}
				if m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil || !strings.Contains(string(m.Data()), "key_a") {
					t.Fatalf("a verifier cannot read KEYS: %v", err)
				}
			}
			keysIntact(t, e, 1)
		})
	}

	t.Run("operator", func(t *testing.T) {
		// The positive control: the break-glass role can, so the denials
		// above are the permissions at work, not a broken request.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.JS.DeleteStream(ctx, nats.KeysStream); err != nil {
			t.Fatalf("the operator cannot delete KEYS: %v", err)
		}
	})
}

// TestRoutesRefuseStrangers is the attack of a process that reaches the
// cluster port and offers itself as a route: before route authentication,
// any nats-server could join the cluster and receive every stream's data
// (and vote in its Raft groups).
func TestRoutesRefuseStrangers(t *testing.T) {
	t.Run("a cluster needs route credentials", func(t *testing.T) {
		fleet, _ := natstest.MustFleet(t, false)
		_, err := nats.StartServer(nats.ServerConfig{Name: "c1", StoreDir: t.TempDir(), Cluster: "127.0.0.1:0",
			Routes: []string{"nats-route://127.0.0.1:1"}, Fleet: fleet})
		if err == nil || !strings.Contains(err.Error(), "route credentials") {
			t.Fatalf("StartServer without route credentials: %v", err)
		}
	})
	t.Run("a route without the password is refused", func(t *testing.T) {
		fleet, _ := natstest.MustFleet(t, true)
		srv, err := nats.StartServer(nats.ServerConfig{Name: "c1", StoreDir: t.TempDir(), Listen: "127.0.0.1:0", Cluster: "127.0.0.1:0",
			Routes: []string{"nats-route://127.0.0.1:1"}, Fleet: fleet})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Stop()
		addr := srv.ClusterAddr()
		for _, tc := range []struct{ name, connect string }{
			{"no credentials", `{"verbose":false,"pedantic":false,"name":"rogue"}`},
			{"wrong password", `{"verbose":false,"pedantic":false,"name":"rogue","user":"` + fleet.Routes.Username + `","pass":"guess-guess-guess"}`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				conn, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(conn)
				if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "INFO ") {
					t.Fatalf("want the server's INFO, got %q %v", line, err)
				}
				if _, err := conn.Write([]byte("CONNECT " + tc.connect + "\r\nPING\r\n")); err != nil {
					t.Fatal(err)
				}
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						t.Fatalf("connection ended without an authorization error: %v", err)
					}
					if strings.HasPrefix(line, "-ERR") {
						if !strings.Contains(line, "Authorization") {
							t.Fatalf("error %q, want an authorization violation", line)
						}
						return
					}
					if strings.HasPrefix(line, "PONG") {
						t.Fatal("a route without the password was accepted")
					}
				}
			})
		}
	})
}
