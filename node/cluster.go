package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/verifier"
)

// Cluster is n admin nodes in one process on loopback, each with an
// embedded NATS server in one JetStream cluster (R = min(n, 3), sync
// always): what `keyledger bench revoke` and the fault tests run against.
type Cluster struct {
	// Configs are the nodes' configurations, Nodes the running nodes (an
	// element is nil while that node is stopped).
	Configs []Config
	Nodes   []*Node
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ClusterConfigs returns the configurations of an n-node cluster whose
// data directories are in dir, with free loopback ports.
func ClusterConfigs(n int, dir, token string, log *slog.Logger) ([]Config, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	replicas := min(n, 3)
	cfgs := make([]Config, n)
	// One fleet for all: each node's nkey and signing key, the route
	// password, and the keyring trusting every node's signing key; and
	// two verifiers, v1 and v2, that may follow the cluster (--role
	// verifier with Credentials set to the same directory).
	creds := filepath.Join(dir, "credentials")
	members := []nats.Member{{Name: "operator", Roles: []nats.Role{nats.RoleOperator}},
		{Name: "v1", Roles: []nats.Role{nats.RoleVerifier}}, {Name: "v2", Roles: []nats.Role{nats.RoleVerifier}}}
	for i := range n {
		members = append(members, nats.Member{Name: fmt.Sprintf("n%d", i+1), Roles: []nats.Role{nats.RoleAdmin, nats.RoleAnalytics}})
	}
	if err := GenerateCredentials(creds, members, n > 1, nil); err != nil {
		return nil, err
	}
	for i := range n {
		var routes []string
		for j := range n {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+j]))
			}
		}
		name := fmt.Sprintf("n%d", i+1)
		cfgs[i] = Config{
			Role: RoleAdmin, DataDir: filepath.Join(dir, name), HTTPAddr: "127.0.0.1:0", Environment: keyledger.EnvLive,
			NATSListen: fmt.Sprintf("127.0.0.1:%d", ports[i]), Cluster: fmt.Sprintf("127.0.0.1:%d", ports[n+i]),
			ClusterName: "keyledger", Routes: routes, Replicas: replicas, Sync: "always", AdminToken: token,
			Prefix: keyledger.DefaultPrefix, Permissions: keyledger.DefaultPermissions, TestRateLimit: verifier.DefaultTestRateLimit,
			Name: name, Logger: log.With("node", name), Credentials: creds,
		}
		if n == 1 {
			// One node is a standalone server: a JetStream cluster of one
			// never elects a meta leader without peers to route to.
			cfgs[i].Cluster, cfgs[i].ClusterName = "", ""
		}
	}
	return cfgs, nil
}

// StartCluster starts every node at once: each waits in EnsureStreams for
// the JetStream quorum that only the others can give it.
func StartCluster(ctx context.Context, cfgs []Config) (*Cluster, error) {
	c := &Cluster{Configs: cfgs, Nodes: make([]*Node, len(cfgs))}
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i := range cfgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Nodes[i], errs[i] = Open(ctx, cfgs[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			c.Close(context.Background())
			return nil, fmt.Errorf("node %s: %w", cfgs[i].Name, err)
		}
	}
	return c, nil
}

// Stop closes node i, within ctx.
func (c *Cluster) Stop(ctx context.Context, i int) error {
	n := c.Nodes[i]
	c.Nodes[i] = nil
	if n == nil {
		return nil
	}
	return n.Close(ctx)
}

// Restart starts node i again on its own data dir and ports.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	n, err := Open(ctx, c.Configs[i])
	if err != nil {
		return err
	}
	c.Nodes[i] = n
	return nil
}

// Close stops every node that is running.
func (c *Cluster) Close(ctx context.Context) {
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		if n != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.Close(ctx)
			}()
		}
	}
	wg.Wait()
}
