package events

import (
	"fmt"
	"net"
	"strconv"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
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
	// SyncAlways fsyncs every write before acknowledging it.
	SyncAlways bool
}

// Server is a running embedded NATS server.
type Server struct {
	*server.Server
}

// StartServer starts an embedded NATS server and waits until it accepts
// connections.
func StartServer(cfg ServerConfig) (*Server, error) {
	opts := &server.Options{
		ServerName: cfg.Name,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		SyncAlways: cfg.SyncAlways,
		NoSigs:     true, // keyledger handles signals itself
		NoLog:      true,
	}
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(cfg.Listen)
		if err != nil {
			return nil, keyledger.Errorf(keyledger.Invalid, "--nats-listen %q: want host:port", cfg.Listen)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, keyledger.Errorf(keyledger.Invalid, "--nats-listen %q: bad port", cfg.Listen)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Internal, err, "cannot configure the embedded NATS server")
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, keyledger.Errorf(keyledger.Unavailable, "embedded NATS server did not start (is %s in use?)", cfg.Listen)
	}
	return &Server{s}, nil
}

// Connect returns a client connection to the server: in-process (no socket)
// when it does not listen.
func (s *Server) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.Name(name), nats.InProcessServer(s.Server)}, opts...)
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, fmt.Sprintf("cannot connect to embedded NATS server"))
	}
	return nc, nil
}

// Stop shuts the server down and waits until it has.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}
