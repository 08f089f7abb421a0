package nats

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
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
	// Logger, if set, receives the server's warnings and errors (a full
	// disk, a lost route, an authentication failure); notices go to it
	// at debug level. Without it the server logs nothing.
	Logger *slog.Logger
	// Fleet is who may connect and what each member may do. It is
	// required: the server never accepts an anonymous client, on any
	// listener, nor an unauthenticated route (a cluster needs
	// Fleet.Routes).
	Fleet *Fleet
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
	if cfg.Fleet == nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "the embedded NATS server needs a fleet file: it accepts no anonymous clients")
	}
	if err := cfg.Fleet.Validate(); err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName:   cfg.Name,
		JetStream:    true,
		StoreDir:     cfg.StoreDir,
		SyncAlways:   cfg.SyncAlways,
		SyncInterval: cfg.SyncInterval,
		NoSigs:       true, // keyledger handles signals itself
		NoLog:        true,
		// Authentication on every client connection, in-process ones
		// included: no NoAuthUser, so a client without an nkey is
		// refused.
		Nkeys: nkeyUsers(cfg.Fleet),
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
		ra := cfg.Fleet.Routes
		if ra == nil {
			return nil, keyledger.Errorf(keyledger.Invalid, "--cluster needs route credentials: generate the fleet with routes (keyledger creds generate --routes)")
		}
		opts.Cluster = server.ClusterOpts{Name: name, Host: host, Port: p, Username: ra.Username, Password: ra.Password}
		for _, r := range cfg.Routes {
			u, err := url.Parse(strings.TrimSpace(r))
			if err != nil || u.Host == "" {
				return nil, keyledger.Errorf(keyledger.Invalid, "--routes: %q is not a nats-route://host:port URL", r)
			}
			// Routes authenticate with the fleet's credentials; a
			// password in the flag would end up in process listings.
			u.User = url.UserPassword(ra.Username, ra.Password)
			opts.Routes = append(opts.Routes, u)
		}
	}
	if cfg.Logger != nil {
		opts.NoLog = false
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Internal, err, "cannot configure the embedded NATS server")
	}
	if cfg.Logger != nil {
		s.SetLoggerV2(serverLog{cfg.Logger.With("component", "nats-server")}, false, false, false)
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

// nkeyUsers turns the fleet into the server's users.
func nkeyUsers(f *Fleet) []*server.NkeyUser {
	users := make([]*server.NkeyUser, 0, len(f.Members))
	for _, m := range f.Members {
		users = append(users, &server.NkeyUser{Nkey: m.NKey, Permissions: Permissions(m)})
	}
	return users
}

// Connect returns a client connection to the server, authenticated as id:
// in-process (no socket).
func (s *Server) Connect(id *Identity, opts ...natsgo.Option) (*natsgo.Conn, error) {
	opts = append(append([]natsgo.Option{natsgo.Name("keyledger " + id.Name), natsgo.InProcessServer(s.Server)}, id.Options()...), opts...)
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

// serverLog adapts nats-server's logger to slog. The server redacts
// passwords in the URLs it logs; nkeys it names are public keys.
type serverLog struct{ log *slog.Logger }

func (l serverLog) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l serverLog) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l serverLog) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l serverLog) Fatalf(format string, v ...any) {
	l.log.Error("fatal: " + fmt.Sprintf(format, v...))
}
func (l serverLog) Debugf(format string, v ...any) {}
func (l serverLog) Tracef(format string, v ...any) {}
