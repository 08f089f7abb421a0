package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/node/nodetest"
)

const clusterToken = "cluster-test-token-0123456789"

// MustStartCluster starts n admin nodes, each with an embedded NATS server,
// as one JetStream cluster with R3 streams and sync-always, on loopback.
func MustStartCluster(tb testing.TB, n int) *node.Cluster {
	tb.Helper()
	return MustStartClusterWith(tb, n, tb.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
}

// MustStartClusterWith is MustStartCluster in dir, logging to log, with
// edit (if set) changing the nodes' configurations before they start.
func MustStartClusterWith(tb testing.TB, n int, dir string, log *slog.Logger, edit func([]node.Config)) *node.Cluster {
	tb.Helper()
	cfgs, err := node.ClusterConfigs(n, dir, clusterToken, log)
	if err != nil {
		tb.Fatal(err)
	}
	if edit != nil {
		edit(cfgs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := node.StartCluster(ctx, cfgs)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

// caller talks to node i of c.
func caller(t *testing.T, c *node.Cluster, i int) *nodetest.Caller {
	return &nodetest.Caller{T: t, Base: c.Nodes[i].URL(), Token: clusterToken}
}

// stop closes node i and forgets it, so cleanup does not close it twice.
func stop(t *testing.T, c *node.Cluster, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Stop(ctx, i); err != nil {
		t.Logf("closing node %d: %v", i, err)
	}
}

type createdKey struct {
	Key, ID   string
	AppliedBy string `json:"applied_by"`
}

func TestCluster_faults(t *testing.T) {
	c := MustStartCluster(t, 3)
	for i := range c.Nodes {
		nodetest.WaitReady(t, caller(t, c, i))
	}
	// Every node must have heard every other before wait=all means "all".
	nodetest.WaitFor(t, 10*time.Second, "three live nodes in the registry", func() bool {
		return len(c.Nodes[0].Fleet().Live()) == 3
	})

	t.Run("wait=all reports every node", func(t *testing.T) {
		a := caller(t, c, 0)
		code, _, body := a.Call("POST", "/v1/keys?wait=all", a.Token, `{"name":"w","environment":"live"}`)
		var k createdKey
		if code != 201 || json.Unmarshal(body, &k) != nil || k.AppliedBy != "3/3" {
			t.Fatalf("create wait=all: %d %s", code, body)
		}
		for i := range c.Nodes {
			if code, _, _ := caller(t, c, i).Call("GET", "/v1/authz", k.Key, ""); code != 200 {
				t.Fatalf("node %d: %d right after wait=all create", i, code)
			}
		}
		code, _, body = a.Call("POST", "/v1/keys/"+k.ID+"/revoke", a.Token, `{"reason":"r"}`)
		if code != 200 || !strings.Contains(string(body), `"applied_by":"3/3"`) {
			t.Fatalf("revoke (default wait=all): %d %s", code, body)
		}
		for i := range c.Nodes {
			if code, _, _ := caller(t, c, i).Call("GET", "/v1/authz", k.Key, ""); code != 401 {
				t.Fatalf("node %d: %d right after the revoke returned, want 401", i, code)
			}
		}
		code, _, body = a.Call("GET", "/v1/nodes", a.Token, "")
		if code != 200 || strings.Count(string(body), `"name":"n`) != 3 {
			t.Fatalf("nodes: %d %s", code, body)
		}
	})

	// Read your writes on every admin node. Before the read barrier, a
	// GET on n2 right after a create on n1 answered 404 in about a third
	// of the rounds, and before create waited for the fleet by default
	// the new key got 401 there as often.
	t.Run("a write acknowledged on one node is read and served on every other", func(t *testing.T) {
		a, b := caller(t, c, 0), caller(t, c, 1)
		for round := range 40 {
			code, _, body := a.Call("POST", "/v1/keys", a.Token, `{"name":"ryw","environment":"live"}`)
			var k createdKey
			if code != 201 || json.Unmarshal(body, &k) != nil || k.AppliedBy != "3/3" {
				t.Fatalf("round %d: create (default wait): %d %s", round, code, body)
			}
			if code, _, _ := b.Call("GET", "/v1/authz", k.Key, ""); code != 200 {
				t.Fatalf("round %d: the new key got %d on n2 after create returned", round, code)
			}
			code, _, body = a.Call("POST", "/v1/keys?wait=none", a.Token, `{"name":"ryw","environment":"live"}`)
			if code != 201 || json.Unmarshal(body, &k) != nil || k.AppliedBy == "" {
				t.Fatalf("round %d: create wait=none: %d %s (applied_by is always reported)", round, code, body)
			}
			if code, _, body := b.Call("GET", "/v1/keys/"+k.ID, b.Token, ""); code != 200 {
				t.Fatalf("round %d: GET on n2 right after a create on n1: %d %s", round, code, body)
			}
		}
	})

	t.Run("writes flow while a node is killed and restarted; tables end identical", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		var mu sync.Mutex
		acked := map[string]string{} // key id -> "active" or "revoked", as acknowledged
		// ackedCount is the number of acknowledged creates, for waiting on
		// progress rather than on time.
		ackedCount := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(acked)
		}
		var wg sync.WaitGroup
		stopWriters := make(chan struct{})
		stopOnce := sync.OnceFunc(func() { close(stopWriters) })
		// However the test ends, the writers stop before it does.
		defer func() {
			stopOnce()
			wg.Wait()
		}()
		for w := 0; w < 2; w++ { // writers on the nodes that stay up
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				a := caller(t, c, w)
				for i := 0; ; i++ {
					select {
					case <-stopWriters:
						return
					default:
					}
					// Try, not Call: only the test's goroutine may fail the test.
					code, _, body, err := a.Try("POST", "/v1/keys?wait=none", a.Token, `{"name":"f","environment":"live"}`)
					if err != nil || code != 201 {
						continue // e.g. 503 during a leader election: not acknowledged
					}
					var k createdKey
					json.Unmarshal(body, &k)
					mu.Lock()
					acked[k.ID] = "active"
					mu.Unlock()
					if i%2 == 0 {
						if code, _, _, err := a.Try("POST", "/v1/keys/"+k.ID+"/revoke?wait=none", a.Token, ""); err == nil && code == 200 {
							mu.Lock()
							acked[k.ID] = "revoked"
							mu.Unlock()
						}
					}
				}
			}(w)
		}
		// Writes acknowledged before the kill, while n3 is down, and after
		// it is back: each phase waits for progress, not for time.
		progress := func(what string, more int) {
			t.Helper()
			want := ackedCount() + more
			nodetest.WaitFor(t, 30*time.Second, what, func() bool { return ackedCount() >= want })
		}
		progress("writes before n3 stops", 10)
		stop(t, c, 2)
		progress("writes while n3 is down", 10)
		if err := c.Restart(ctx, 2); err != nil {
			t.Fatalf("restart: %v", err)
		}
		progress("writes after n3 is back", 10)
		stopOnce()
		wg.Wait()
		if len(acked) < 10 {
			t.Fatalf("only %d acknowledged creates: the test did not exercise much", len(acked))
		}

		// Every node converges on the same table, which holds every
		// acknowledged event.
		last := c.Nodes[0].Projector().Stats().LastSeq
		for i := range c.Nodes {
			if err := c.Nodes[i].Projector().WaitApplied(ctx, last); err != nil {
				t.Fatalf("node %d never applied seq %d: %v", i, last, err)
			}
		}
		nodetest.WaitFor(t, 10*time.Second, "identical tables", func() bool {
			d := c.Nodes[0].Projector().Table().Digest()
			return c.Nodes[1].Projector().Table().Digest() == d && c.Nodes[2].Projector().Table().Digest() == d
		})
		for id, state := range acked {
			for i, n := range c.Nodes {
				k, ok := n.Projector().Key(id)
				if !ok {
					t.Fatalf("node %d lost acknowledged key %s", i, id)
				}
				if state == "revoked" && k.RevokedAt == nil {
					t.Fatalf("node %d lost the acknowledged revocation of %s", i, id)
				}
			}
		}
		t.Logf("%d acknowledged keys, ledger at seq %d", len(acked), last)
	})

	t.Run("wait=all with a node stopped returns after the timeout and names it", func(t *testing.T) {
		a := caller(t, c, 0)
		// Start from a settled cluster: after the restart above, a node's
		// consumer may still be re-establishing itself for a moment.
		nodetest.WaitFor(t, 20*time.Second, "a write applied by all three nodes", func() bool {
			code, _, body := a.Call("POST", "/v1/keys?wait=all&timeout=1s", a.Token, `{"name":"settle","environment":"live"}`)
			return code == 201 && strings.Contains(string(body), `"applied_by":"3/3"`)
		})
		stopped := time.Now()
		stop(t, c, 2)
		// The timeout leaves n2 time to re-establish its consumer if n3
		// led the stream (about a second after a leader change).
		start := time.Now()
		code, _, body := a.Call("POST", "/v1/keys?wait=all&timeout=3s", a.Token, `{"name":"t","environment":"live"}`)
		elapsed := time.Since(start)
		// 3 s is shorter than n3's lease: n3 cannot be proven to refuse
		// keys yet, and the answer says so.
		if code != 201 || !strings.Contains(string(body), `"applied_by":"2/3"`) || !strings.Contains(string(body), `"pending_nodes":["n3"]`) ||
			!strings.Contains(string(body), `"unproven_nodes":["n3"]`) {
			t.Fatalf("create with n3 down: %d %s", code, body)
		}
		if elapsed < 3*time.Second {
			t.Fatalf("returned after %v, before the timeout", elapsed)
		}
		// With the default wait, the write returns once n3's lease has
		// certainly run out: n3 is counted, as refusing, never dropped.
		code, _, body = a.Call("POST", "/v1/keys?wait=all", a.Token, `{"name":"t","environment":"live"}`)
		if code != 201 || !strings.Contains(string(body), `"applied_by":"2/3"`) || !strings.Contains(string(body), `"refusing_nodes":["n3"]`) ||
			strings.Contains(string(body), "unproven") {
			t.Fatalf("create after n3 stopped: %d %s", code, body)
		}
		if lease := c.Nodes[0].Projector().Lease(); time.Since(stopped) < lease {
			t.Fatalf("n3 counted as refusing %v after it stopped, within its %v lease", time.Since(stopped), lease)
		}
	})

	t.Run("a node restarted cold never accepts a revoked key while catching up", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		a := caller(t, c, 0)
		// A revoked key the restarted node must refuse from its first answer.
		code, _, body := a.Call("POST", "/v1/keys?wait=none", a.Token, `{"name":"r","environment":"live"}`)
		var k createdKey
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		if code, _, _ := a.Call("POST", "/v1/keys/"+k.ID+"/revoke?wait=none", a.Token, ""); code != 200 {
			t.Fatalf("revoke: %d", code)
		}
		if err := c.Restart(ctx, 2); err != nil {
			t.Fatal(err)
		}
		n3 := caller(t, c, 2)
		seen := map[int]int{}
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			code, _, _ := n3.Call("GET", "/v1/authz", k.Key, "")
			seen[code]++
			if code == 200 {
				t.Fatal("a catching-up node accepted a revoked key")
			}
			if code == 401 {
				break
			}
		}
		if seen[401] == 0 {
			t.Fatalf("restarted node never answered 401 for the revoked key: %v", seen)
		}
		if code, _, _ := n3.Call("GET", "/readyz", "", ""); code != 200 {
			t.Fatalf("readyz after catching up: %d", code)
		}
		t.Logf("answers while catching up: %v", fmt.Sprint(seen))
	})

	t.Run("a verifier node follows the cluster and never lowers its replication", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a := caller(t, c, 0)
		code, _, body := a.Call("POST", "/v1/keys?wait=all", a.Token, `{"name":"v","environment":"live"}`)
		var k createdKey
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		v := nodetest.MustOpenConfig(t, node.Config{
			Role: node.RoleVerifier, DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", Environment: c.Configs[0].Environment,
			NATSURL: "nats://" + c.Configs[0].NATSListen, Prefix: c.Configs[0].Prefix, Permissions: c.Configs[0].Permissions,
			TestRateLimit: c.Configs[0].TestRateLimit, Name: "v1", Logger: c.Configs[0].Logger, // Replicas left at the default 1
			Credentials: c.Configs[0].Credentials,
		})
		vc := &nodetest.Caller{T: t, Base: v.URL()}
		nodetest.WaitReady(t, vc)
		if code, _, _ := vc.Call("GET", "/v1/authz", k.Key, ""); code != 200 {
			t.Fatalf("verifier node: %d", code)
		}
		if code, _, _ := vc.Call("GET", "/v1/keys", clusterToken, ""); code != 404 {
			t.Fatalf("a verifier node serves no admin API, got %d", code)
		}
		for _, name := range []string{"KEYS", "USAGE"} {
			s, err := c.Nodes[0].JetStream().Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if r := s.CachedInfo().Config.Replicas; r != 3 {
				t.Fatalf("%s has %d replicas after a verifier started, want 3", name, r)
			}
		}
	})

	t.Run("a node that lost the majority fails closed", func(t *testing.T) {
		a := caller(t, c, 0)
		code, _, body := a.Call("POST", "/v1/keys?wait=all", a.Token, `{"name":"m","environment":"live"}`)
		var k createdKey
		if code != 201 || json.Unmarshal(body, &k) != nil {
			t.Fatalf("create: %d %s", code, body)
		}
		stop(t, c, 1)
		stop(t, c, 2)
		// The stream's Raft group notices the lost quorum within a few
		// election timeouts, then the node is stale after --max-staleness.
		nodetest.WaitFor(t, 60*time.Second, "503 on the survivor", func() bool {
			code, _, _ := a.Call("GET", "/v1/authz", k.Key, "")
			return code == 503
		})
		if code, _, _ := a.Call("GET", "/readyz", "", ""); code != 503 {
			t.Fatalf("readyz without a majority: %d", code)
		}
	})
}
