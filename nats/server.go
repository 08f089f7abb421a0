package nats

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
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
	log   *slog.Logger
	jsCfg server.JetStreamConfig
	// storeErr is the write error that stopped JetStream's store (a full
	// or read-only disk), until the watchdog has restarted JetStream.
	storeErr atomic.Pointer[string]
	cancel   context.CancelFunc
	done     chan struct{}
	// probeEvery and probeSize pace and size the watchdog's check that
	// the disk takes writes again.
	probeEvery time.Duration
	probeSize  int
	clustered  bool
}

// StreamBufferBytes is the ingest buffer a stream of the embedded server
// has (JetStream's max_buffered_size; see StartServer). An external NATS
// server needs at least as much for admin nodes to publish snapshots of
// millions of keys.
const StreamBufferBytes = 640 << 20

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
		// An Object Store put (a published snapshot: 850 MB at ten
		// million keys) keeps up to 4,000 chunks of 128 KiB in flight,
		// and nats.go offers no way to lower that; past the server's
		// default ingest buffer of 128 MiB a stream answers 429 and the
		// put fails. Buffered bytes are only ever what clients sent
		// ahead of the disk.
		StreamMaxBufferedSize: StreamBufferBytes,
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
	// The server always logs to us: its errors are how a failed store
	// (full or read-only disk) is noticed, with or without a Logger.
	opts.NoLog = false
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Internal, err, "cannot configure the embedded NATS server")
	}
	s := &Server{Server: ns, log: log, probeEvery: 2 * time.Second, probeSize: 4 << 20, clustered: cfg.Cluster != ""}
	ns.SetLoggerV2(serverLog{log: log.With("component", "nats-server"), onWriteError: s.storeFailed}, false, false, false)
	go ns.Start()
	// A cluster member is ready for clients before its peers are up;
	// callers wait for a JetStream meta leader through EnsureStreams.
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, keyledger.Errorf(keyledger.Unavailable, "embedded NATS server did not start (is %s in use?)", cfg.Listen)
	}
	if c := ns.JetStreamConfig(); c != nil {
		s.jsCfg = *c
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		s.watch(ctx)
	}()
	return s, nil
}

// storeFailed records the write error the server reported (once).
func (s *Server) storeFailed(msg string) {
	if s.storeErr.CompareAndSwap(nil, &msg) {
		s.log.Error("ledger storage failed: JetStream refuses every write to its store until it is restarted; keyledger restarts it as soon as the disk takes writes again",
			"store_dir", s.jsCfg.StoreDir, "cause", msg, "clustered", s.clustered)
	}
}

// StorageError reports why a standalone server cannot store events now
// (a full or read-only disk), or nil. Appends fail at once with it
// instead of riding out their write timeout: no retry helps until the disk
// recovers. A cluster member returns nil: the other replicas still
// accept writes while this one is out.
func (s *Server) StorageError() error {
	if s.storeErr.Load() == nil || s.clustered {
		return nil
	}
	return errStorage
}

// StorageFailed reports whether the store has failed and not yet
// recovered, clustered or not.
func (s *Server) StorageFailed() bool { return s.storeErr.Load() != nil }

var errStorage = keyledger.Errorf(keyledger.Unavailable,
	"the ledger's storage on this node is full or read-only; writes resume by themselves once it takes writes again")

// watch restarts JetStream once a failed store's disk takes writes again:
// nats-server keeps a store's first write error for good (until a
// restart), so freeing space alone would not bring writes back.
func (s *Server) watch(ctx context.Context) {
	t := time.NewTicker(s.probeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.storeErr.Load() == nil || s.jsCfg.StoreDir == "" {
			continue
		}
		if err := probeDisk(s.jsCfg.StoreDir, s.probeSize); err != nil {
			continue
		}
		if err := s.restartJetStream(); err != nil {
			s.log.Error("ledger storage: restarting JetStream failed; trying again", "err", err)
			continue
		}
		s.storeErr.Store(nil)
		s.log.Info("ledger storage recovered: JetStream restarted and accepts writes again", "store_dir", s.jsCfg.StoreDir)
	}
}

// restartJetStream reloads every stream from disk, which clears their
// write errors. Clients stay connected; consumers recreate themselves.
func (s *Server) restartJetStream() error {
	if err := s.ShutdownJetStream(); err != nil {
		return err
	}
	cfg := s.jsCfg
	// EnableJetStream appends the "jetstream" directory itself.
	cfg.StoreDir = filepath.Dir(cfg.StoreDir)
	return s.EnableJetStream(&cfg)
}

// probeDisk writes, syncs and removes size bytes in dir: proof that the
// disk takes writes again.
func probeDisk(dir string, size int) error {
	f, err := os.CreateTemp(dir, ".keyledger-probe-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(make([]byte, size)); err != nil {
		return err
	}
	return f.Sync()
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
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	s.Shutdown()
	s.WaitForShutdown()
}

// serverLog adapts nats-server's logger to slog. The server redacts
// passwords in the URLs it logs; nkeys it names are public keys.
type serverLog struct {
	log *slog.Logger
	// onWriteError hears the server's "critical write error" reports:
	// a store (stream, consumer, meta group) that failed to write stops
	// taking writes for good.
	onWriteError func(msg string)
}

func (l serverLog) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l serverLog) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l serverLog) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error(msg)
	if l.onWriteError != nil && strings.Contains(strings.ToLower(msg), "critical write error") {
		l.onWriteError(msg)
	}
}
func (l serverLog) Fatalf(format string, v ...any) {
	l.log.Error("fatal: " + fmt.Sprintf(format, v...))
}
func (l serverLog) Debugf(format string, v ...any) {}
func (l serverLog) Tracef(format string, v ...any) {}
