// Package analyticstest gives tests the ClickHouse that `make test` runs.
//
// Tests never install or start ClickHouse themselves: scripts/test.sh
// (`make test`) starts the project's instance and exports
// KEYLEDGER_CLICKHOUSE=host:port (native protocol) for every package.
// A test that needs ClickHouse calls Addr, which fails the test (it never
// skips it) with instructions when the variable is unset or nothing
// answers there, and takes a database of its own from MustTempDatabase:
//
//	addr := analyticstest.Addr(t)
//	dsn := analyticstest.DSN(addr, analyticstest.MustTempDatabase(t, addr))
//	a, err := analytics.Open(ctx, analytics.Config{DSN: dsn, ...})
//
// To run such tests by hand:
//
//	./scripts/clickhouse.sh start   # prints 127.0.0.1:19000
//	KEYLEDGER_CLICKHOUSE=127.0.0.1:19000 go test ./analytics/
//
// The package does not import package analytics (whose own tests use it),
// only the ClickHouse driver.
package analyticstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// EnvAddr is the environment variable holding the host:port (native
// protocol) of the ClickHouse tests use.
const EnvAddr = "KEYLEDGER_CLICKHOUSE"

// PingTimeout bounds the check that ClickHouse answers at the address.
const PingTimeout = 10 * time.Second

// probes caches, per address, whether ClickHouse answered: every test of a
// process asks, only the first one waits.
var probes sync.Map // addr → *probe

type probe struct {
	once sync.Once
	err  error
}

// Addr returns the host:port of the test ClickHouse, from
// KEYLEDGER_CLICKHOUSE. It fails the test (tb.Fatal, never a skip) when
// the variable is unset or when ClickHouse does not answer a ping there
// within PingTimeout. The ping runs once per process and address.
func Addr(tb testing.TB) string {
	tb.Helper()
	addr := os.Getenv(EnvAddr)
	if addr == "" {
		tb.Fatalf("ClickHouse is required: run `make test`, which starts one, or set %s=host:port "+
			"(e.g. `./scripts/clickhouse.sh start` then %s=127.0.0.1:19000)", EnvAddr, EnvAddr)
	}
	if err := Ping(addr); err != nil {
		tb.Fatalf("ClickHouse is required but does not answer at %s=%s: %v; run `make test`, which starts one, "+
			"or point %s at a running ClickHouse (host:port, native protocol)", EnvAddr, addr, err, EnvAddr)
	}
	return addr
}

// Ping checks, within PingTimeout, that a ClickHouse answers at addr
// (host:port, native protocol). The answer is cached per address for the
// life of the process.
func Ping(addr string) error {
	v, _ := probes.LoadOrStore(addr, &probe{})
	p := v.(*probe)
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), PingTimeout)
		defer cancel()
		p.err = withConn(ctx, addr, func(conn clickhouse.Conn) error { return conn.Ping(ctx) })
	})
	return p.err
}

// MustTempDatabase returns the name of a fresh database on the ClickHouse
// at addr (from Addr), unique to the test, and drops that database when
// the test ends. It does not create it: analytics.Open creates the
// database of its DSN (see DSN). A failed drop is logged, not failed.
func MustTempDatabase(tb testing.TB, addr string) string {
	tb.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		tb.Fatalf("random database name: %v", err)
	}
	db := "kltest_" + hex.EncodeToString(b)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := withConn(ctx, addr, func(conn clickhouse.Conn) error {
			return conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db)
		})
		if err != nil {
			tb.Logf("analyticstest: dropping database %s on %s: %v", db, addr, err)
		}
	})
	return db
}

// DSN returns the analytics DSN of database db on the ClickHouse at addr:
// clickhouse://addr/db.
func DSN(addr, db string) string {
	return "clickhouse://" + addr + "/" + db
}

// withConn runs f on a connection to the default database at addr.
func withConn(ctx context.Context, addr string, f func(clickhouse.Conn) error) error {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:         []string{addr},
		DialTimeout:  5 * time.Second,
		MaxOpenConns: 1,
	})
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	return f(conn)
}
