package nats

import (
	"net"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
)

// ServerConfig configures an embedded NATS server with JetStream, so that
// one keyledger binary is a whole system.
type ServerConfig struct {
	// Name of the server (unique within a cluster).
	Name string
	// StoreDir holds JetStream's files.
	StoreDir string
	// Listen is host:port for clients and other nodes; "" accepts only
	// in-process connections; port 0 picks a free port.
	Listen string
	// SyncAlways fsyncs every write before acknowledging it. Without it
	// JetStream acknowledges before it syncs (every SyncInterval, 2 min by
	// default), and a power failure loses acknowledged writes. USAGE opts
	// out per stream (async persist mode), so this costs only KEYS writes.
	SyncAlways bool
	// SyncInterval, when SyncAlways is off, overrides the default 2 min.
	SyncInterval time.Duration
	// Cluster is host:port for routes from other servers of a cluster
	// ("" = standalone). ClusterName names the cluster (default
	// "keyledger"); Routes are the other members' nats-route:// URLs.
	Cluster     string
	ClusterName string
	Routes      []string
}

func splitHostPort(what, hp string) (string, int, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, keyledger.Errorf(keyledger.Invalid, "%s %q: want host:port", what, hp)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, keyledger.Errorf(keyledger.Invalid, "%s %q: bad port", what, hp)
	}
	return host, p, nil
}

// Server is a running embedded NATS server.
type Server struct {
	*server.Server
}

// StartServer starts an embedded NATS server and waits until it accepts
// connections.
func StartServer(cfg ServerConfig) (*Server, error) {
	opts := &server.Options{
		ServerName:   cfg.Name,
		JetStream:    true,
		StoreDir:     cfg.StoreDir,
		SyncAlways:   cfg.SyncAlways,
		SyncInterval: cfg.SyncInterval,
		NoSigs:       true, // keyledger handles signals itself
		NoLog:        true,
	}
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, p, err := splitHostPort("--nats-listen", cfg.Listen)
		if err != nil {
			return nil, err
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	if cfg.Cluster != "" {
		host, p, err := splitHostPort("--cluster", cfg.Cluster)
		if err != nil {
			return nil, err
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		name := cfg.ClusterName
		if name == "" {
			name = "keyledger"
		}
		opts.Cluster = server.ClusterOpts{Name: name, Host: host, Port: p}
		if len(cfg.Routes) > 0 {
			opts.Routes = server.RoutesFromStr(strings.Join(cfg.Routes, ","))
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Internal, err, "cannot configure the embedded NATS server")
	}
	go s.Start()
	// A cluster member is ready for clients before its peers are up;
	// callers wait for a JetStream meta leader through EnsureStreams.
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, keyledger.Errorf(keyledger.Unavailable, "embedded NATS server did not start (is %s in use?)", cfg.Listen)
	}
	return &Server{s}, nil
}

// Connect returns a client connection to the server: in-process (no socket)
// when it does not listen.
func (s *Server) Connect(name string, opts ...natsgo.Option) (*natsgo.Conn, error) {
	opts = append([]natsgo.Option{natsgo.Name(name), natsgo.InProcessServer(s.Server)}, opts...)
	nc, err := natsgo.Connect("", opts...)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot connect to embedded NATS server")
	}
	return nc, nil
}

// Stop shuts the server down and waits until it has.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}
