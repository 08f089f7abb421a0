// Checks of the files in deploy/: each one is parsed by the tool that will
// read it (nats-server's own config parser, ClickHouse, a YAML parser,
// systemd-analyze and kubectl when installed, the keyledger binary's flag
// set), and the ones that can run here are run: the NATS configs as a real
// 3-server JetStream cluster, the ClickHouse cluster DDL on the local
// ClickHouse (replication swapped out), local-cluster.sh as 3 processes.
// Everything listens on loopback only.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/keyledger/keyledger/analytics"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"
)

var (
	tmpDir    string
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	var err error
	tmpDir, err = os.MkdirTemp("", "keyledger-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(tmpDir)
	os.Exit(code)
}

// keyledgerBinary builds ./cmd/keyledger the way deploy/Dockerfile does
// (static, CGO off), once per run.
func keyledgerBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binPath = filepath.Join(tmpDir, "keyledger")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", binPath, "./cmd/keyledger")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/keyledger: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// serveFlags returns the flag names `keyledger serve -h` lists.
func serveFlags(t *testing.T) map[string]bool {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(keyledgerBinary(t), "serve", "-h")
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("keyledger serve -h: %v\n%s", err, stderr.String())
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`).FindAllStringSubmatch(stderr.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 20 || !flags["role"] || !flags["routes"] {
		t.Fatalf("could not read the flags of keyledger serve -h:\n%s", stderr.String())
	}
	return flags
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---------------------------------------------------------------- NATS

var natsNodes = []string{"nats/nats-1.conf", "nats/nats-2.conf", "nats/nats-3.conf"}

func TestNATSConfigs(t *testing.T) {
	// Without the password variable the server must refuse the config.
	t.Setenv("KEYLEDGER_NATS_PASSWORD", "") // restored after the test
	os.Unsetenv("KEYLEDGER_NATS_PASSWORD")
	if _, err := server.ProcessConfigFile(natsNodes[0]); err == nil || !strings.Contains(err.Error(), "KEYLEDGER_NATS_PASSWORD") {
		t.Errorf("%s parses without KEYLEDGER_NATS_PASSWORD (err %v): clients must authenticate", natsNodes[0], err)
	}
	const password = "deploy-test-password"
	t.Setenv("KEYLEDGER_NATS_PASSWORD", password)

	opts := make([]*server.Options, len(natsNodes))
	names := map[string]bool{}
	for i, f := range natsNodes {
		o, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		opts[i] = o
		if !o.JetStream {
			t.Errorf("%s: JetStream is off", f)
		}
		if !o.SyncAlways {
			t.Errorf("%s: jetstream sync_interval is not always", f)
		}
		if o.StoreDir == "" {
			t.Errorf("%s: no JetStream store_dir", f)
		}
		if o.ServerName == "" || names[o.ServerName] {
			t.Errorf("%s: server_name %q is empty or not unique", f, o.ServerName)
		}
		names[o.ServerName] = true
		if want := fmt.Sprintf("nats-%d", i+1); o.ServerName != want {
			t.Errorf("%s: server_name %q, want %q (routes name the hosts nats-1..3)", f, o.ServerName, want)
		}
		if o.Port == 0 || o.Cluster.Port == 0 || o.Port == o.Cluster.Port || o.HTTPPort == o.Port || o.HTTPPort == o.Cluster.Port {
			t.Errorf("%s: client %d, cluster %d and monitoring %d ports must be set and distinct", f, o.Port, o.Cluster.Port, o.HTTPPort)
		}
		if o.Cluster.Name != "keyledger" {
			t.Errorf("%s: cluster name %q", f, o.Cluster.Name)
		}
		if len(o.Users) != 1 || o.Users[0].Username != "keyledger" || o.Users[0].Password != password {
			t.Errorf("%s: want one user keyledger with the password from the environment", f)
		}
	}
	// Each node routes to exactly the other two, at their cluster ports.
	for i, o := range opts {
		var got, want []string
		for _, u := range o.Routes {
			got = append(got, u.Scheme+"://"+u.Host)
		}
		for j, p := range opts {
			if j != i {
				want = append(want, fmt.Sprintf("nats-route://%s:%d", p.ServerName, p.Cluster.Port))
			}
		}
		sort.Strings(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: routes %v, want %v", natsNodes[i], got, want)
		}
	}
	if t.Failed() {
		return
	}

	// Run the three configs as one cluster on loopback: same options, with
	// addresses, ports and store dirs moved to this machine.
	ports := freePorts(t, 3)
	servers := make([]*server.Server, 3)
	for i, o := range opts {
		o.Host, o.Port = "127.0.0.1", server.RANDOM_PORT
		o.HTTPHost, o.HTTPPort = "", 0
		o.Cluster.Host, o.Cluster.Port = "127.0.0.1", ports[i]
		var routes []string
		for j := range opts {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[j]))
			}
		}
		o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		o.StoreDir = t.TempDir()
		o.NoSigs, o.NoLog = true, true
		s, err := server.NewServer(o)
		if err != nil {
			t.Fatalf("%s: %v", natsNodes[i], err)
		}
		servers[i] = s
		go s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for i, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("%s: server not ready", natsNodes[i])
		}
	}
	if nc, err := nats.Connect(servers[0].ClientURL(), nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Errorf("a client without credentials was let in")
	}
	nc, err := nats.Connect(servers[0].ClientURL(), nats.UserInfo("keyledger", password))
	if err != nil {
		t.Fatalf("connect with the configured user: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// An R3 file stream needs all three servers in one JetStream cluster.
	var stream jetstream.Stream
	for {
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		stream, err = js.CreateOrUpdateStream(actx, jetstream.StreamConfig{
			Name: "DEPLOYTEST", Subjects: []string{"deploytest.>"}, Storage: jetstream.FileStorage, Replicas: 3,
		})
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no R3 stream on the 3-node cluster: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := js.Publish(ctx, "deploytest.x", []byte("x")); err != nil {
		t.Fatalf("publish to the R3 stream: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 || info.State.Msgs != 1 {
		t.Fatalf("R3 stream: cluster %+v, %d msgs", info.Cluster, info.State.Msgs)
	}
	for _, s := range servers {
		if !s.JetStreamEnabled() || !s.JetStreamConfig().SyncAlways {
			t.Errorf("%s: JetStream off or not syncing always at run time", s.Name())
		}
	}
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// ---------------------------------------------------------- ClickHouse

// clickhouseAddr is KEYLEDGER_CLICKHOUSE, or the project's ClickHouse,
// started by scripts/clickhouse.sh if needed.
func clickhouseAddr(t *testing.T) string {
	t.Helper()
	if a := os.Getenv("KEYLEDGER_CLICKHOUSE"); a != "" {
		return a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../scripts/clickhouse.sh", "start")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/clickhouse.sh start: %v\n%s", err, stderr.String())
	}
	lines := strings.Fields(string(out))
	if len(lines) == 0 {
		return "127.0.0.1:19000"
	}
	return lines[len(lines)-1]
}

// sqlStatements splits a SQL file into statements (no ';' inside strings
// in our files), dropping comment lines.
func sqlStatements(sql string) []string {
	var b strings.Builder
	for _, line := range strings.Split(sql, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	var out []string
	for _, s := range strings.Split(b.String(), ";") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

var (
	reCreate     = regexp.MustCompile(`(?is)^CREATE\s+(TABLE|MATERIALIZED VIEW|DATABASE)\s+IF NOT EXISTS\s+([\w.]+)\s+ON CLUSTER\s+'\{cluster\}'`)
	reOnCluster  = regexp.MustCompile(`\s+ON CLUSTER\s+'[^']*'`)
	reReplicated = regexp.MustCompile(`Replicated(\w*MergeTree)\(\s*'([^']*)'\s*,\s*'([^']*)'\s*(,\s*)?`)
	reDistrib    = regexp.MustCompile(`(?s)ENGINE\s*=\s*Distributed\(\s*'([^']*)'\s*,\s*(\w+)\s*,\s*(\w+)\s*,\s*(.*)\)\s*$`)
)

// distributed is one Distributed table of cluster.sql.
type distributed struct {
	name, cluster, database, local, shardKey string
}

// checkClusterSQL checks the cluster-only parts of cluster.sql, which the
// single-node run below cannot: every statement runs ON CLUSTER, every
// local table is replicated under its own Keeper path with the {shard} and
// {replica} macros, every Distributed table points at its local table.
func checkClusterSQL(t *testing.T, stmts []string) []distributed {
	t.Helper()
	paths := map[string]string{}
	var dists []distributed
	for _, s := range stmts {
		m := reCreate.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("statement is not CREATE ... IF NOT EXISTS keyledger.X ON CLUSTER '{cluster}':\n%s", s)
			continue
		}
		kind, name := strings.ToUpper(m[1]), m[2]
		if kind == "DATABASE" {
			if name != "keyledger" {
				t.Errorf("database %q, want keyledger", name)
			}
			continue
		}
		if !strings.HasPrefix(name, "keyledger.") {
			t.Errorf("%s: not qualified with the keyledger database (ON CLUSTER runs it on other servers)", name)
		}
		table := strings.TrimPrefix(name, "keyledger.")
		switch {
		case kind == "MATERIALIZED VIEW":
			if !regexp.MustCompile(`TO keyledger\.\w+_local AS`).MatchString(s) || !regexp.MustCompile(`FROM keyledger\.\w+_local`).MatchString(s) {
				t.Errorf("%s: a view must read and write local tables", table)
			}
		case strings.HasSuffix(table, "_local"):
			r := reReplicated.FindStringSubmatch(s)
			if r == nil {
				t.Errorf("%s: not a Replicated*MergeTree", table)
				continue
			}
			path, replica := r[2], r[3]
			if !strings.Contains(path, "{shard}") || replica != "{replica}" || !strings.HasSuffix(path, "/"+table) {
				t.Errorf("%s: Keeper path %q replica %q: want .../{shard}/.../%s and '{replica}'", table, path, replica, table)
			}
			if other, dup := paths[path]; dup {
				t.Errorf("%s and %s share the Keeper path %s", table, other, path)
			}
			paths[path] = table
		default:
			d := reDistrib.FindStringSubmatch(s)
			if d == nil {
				t.Errorf("%s: want ENGINE = Distributed('{cluster}', keyledger, %s_local, KEY)", table, table)
				continue
			}
			dd := distributed{name: table, cluster: d[1], database: d[2], local: d[3], shardKey: strings.TrimSpace(d[4])}
			if dd.cluster != "{cluster}" || dd.database != "keyledger" || dd.local != table+"_local" ||
				!strings.Contains(s, "AS keyledger."+table+"_local") {
				t.Errorf("%s: Distributed %+v does not point at keyledger.%s_local on '{cluster}'", table, dd, table)
			}
			dists = append(dists, dd)
		}
	}
	return dists
}

// singleNode rewrites cluster.sql for one ClickHouse server in database db:
// no ON CLUSTER, Replicated*MergeTree → *MergeTree with the same engine
// arguments, Distributed → Merge over the local table (readable like the
// Distributed table it stands for).
func singleNode(stmt, db string) string {
	s := reOnCluster.ReplaceAllString(stmt, "")
	s = reReplicated.ReplaceAllString(s, "${1}(")
	s = reDistrib.ReplaceAllString(s, "ENGINE = Merge("+db+", '^${3}$$')")
	s = regexp.MustCompile(`\bkeyledger\.`).ReplaceAllString(s, db+".")
	s = regexp.MustCompile(`(?i)DATABASE IF NOT EXISTS keyledger\b`).ReplaceAllString(s, "DATABASE IF NOT EXISTS "+db)
	return s
}

type chTable struct {
	Engine, EngineFull, PartitionKey, SortingKey, PrimaryKey, Create string
	Columns                                                          []string
}

func chTables(t *testing.T, ctx context.Context, conn driver.Conn, db string) map[string]chTable {
	t.Helper()
	rows, err := conn.Query(ctx, `SELECT name, engine, engine_full, partition_key, sorting_key, primary_key, create_table_query
		FROM system.tables WHERE database = ?`, db)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]chTable{}
	for rows.Next() {
		var name string
		var tb chTable
		if err := rows.Scan(&name, &tb.Engine, &tb.EngineFull, &tb.PartitionKey, &tb.SortingKey, &tb.PrimaryKey, &tb.Create); err != nil {
			t.Fatal(err)
		}
		out[name] = tb
	}
	rows.Close()
	for name, tb := range out {
		crows, err := conn.Query(ctx, `SELECT name, type, default_kind, default_expression,
			is_in_partition_key, is_in_sorting_key, is_in_primary_key FROM system.columns WHERE database = ? AND table = ?`, db, name)
		if err != nil {
			t.Fatal(err)
		}
		for crows.Next() {
			var n, typ, kind, expr string
			var part, sort, prim uint8
			if err := crows.Scan(&n, &typ, &kind, &expr, &part, &sort, &prim); err != nil {
				t.Fatal(err)
			}
			tb.Columns = append(tb.Columns, fmt.Sprintf("%s %s %s%s part=%d sort=%d pk=%d", n, typ, kind, expr, part, sort, prim))
		}
		crows.Close()
		out[name] = tb
	}
	return out
}

// keyColumns are the columns of a Merge/Distributed table as the app sees
// them: name and type only (key flags belong to the local table).
func keyColumns(cols []string) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		f := strings.Fields(c)
		out[i] = f[0] + " " + f[1]
	}
	return out
}

func TestClickHouseClusterSchema(t *testing.T) {
	addr := clickhouseAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Protocol: clickhouse.Native, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() }) // after the databases are dropped
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("ClickHouse at %s: %v", addr, err)
	}
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	clusterDB, appDB := "kl_deploy_cluster_"+suffix, "kl_deploy_app_"+suffix
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		for _, db := range []string{clusterDB, appDB} {
			if err := conn.Exec(cctx, "DROP DATABASE IF EXISTS "+db); err != nil {
				t.Errorf("drop %s: %v", db, err)
			}
		}
	})

	sql := readFile(t, "clickhouse/cluster.sql")
	stmts := sqlStatements(sql)
	dists := checkClusterSQL(t, stmts)

	// The DSN the comments recommend must parse and carry its settings.
	m := regexp.MustCompile(`--clickhouse '([^']+)'`).FindStringSubmatch(sql)
	if m == nil {
		t.Error("cluster.sql does not show the --clickhouse DSN to use")
	} else if opts, db, err := analytics.ParseDSN(m[1]); err != nil {
		t.Errorf("recommended DSN: %v", err)
	} else if db != "keyledger" || opts.Settings["insert_distributed_sync"] != 1 || opts.Settings["distributed_product_mode"] != "global" {
		t.Errorf("recommended DSN gives database %q settings %v", db, opts.Settings)
	}

	for _, s := range stmts {
		s = singleNode(s, clusterDB)
		if err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("cluster.sql (single-node form) fails:\n%s\n: %v", s, err)
		}
	}

	a, err := analytics.Open(ctx, analytics.Config{DSN: "clickhouse://" + addr + "/" + appDB, DetectInterval: -1})
	if err != nil {
		t.Fatalf("analytics.Open: %v", err)
	}
	a.Close(ctx)

	app := chTables(t, ctx, conn, appDB)
	cl := chTables(t, ctx, conn, clusterDB)
	if len(app) < 5 {
		t.Fatalf("the application created only %d tables: %v", len(app), app)
	}
	want := map[string]bool{}
	mergeTrees := 0
	norm := func(q, db string) string {
		q = strings.ReplaceAll(q, db+".", "DB.")
		return strings.ReplaceAll(q, "_local", "")
	}
	for name, at := range app {
		want[name] = true
		ct, ok := cl[name]
		if !ok {
			t.Errorf("cluster.sql has no %s (the application queries it by that name)", name)
			continue
		}
		if at.Engine == "MaterializedView" {
			if ct.Engine != "MaterializedView" || norm(ct.Create, clusterDB) != norm(at.Create, appDB) {
				t.Errorf("view %s differs:\ncluster: %s\napp:     %s", name, ct.Create, at.Create)
			}
			continue
		}
		if !strings.HasSuffix(at.Engine, "MergeTree") {
			t.Errorf("application table %s has engine %s: extend this test", name, at.Engine)
			continue
		}
		want[name+"_local"] = true
		mergeTrees++
		local, ok := cl[name+"_local"]
		if !ok {
			t.Errorf("cluster.sql has no %s_local", name)
			continue
		}
		if local.Engine != at.Engine || local.EngineFull != at.EngineFull || local.PartitionKey != at.PartitionKey ||
			local.SortingKey != at.SortingKey || local.PrimaryKey != at.PrimaryKey {
			t.Errorf("%s_local engine differs from the application's %s:\ncluster: %s %s\napp:     %s %s",
				name, name, local.Engine, local.EngineFull, at.Engine, at.EngineFull)
		}
		if !slices.Equal(local.Columns, at.Columns) {
			t.Errorf("%s_local columns differ:\ncluster: %q\napp:     %q", name, local.Columns, at.Columns)
		}
		if !slices.Equal(keyColumns(ct.Columns), keyColumns(at.Columns)) {
			t.Errorf("%s columns differ:\ncluster: %q\napp:     %q", name, keyColumns(ct.Columns), keyColumns(at.Columns))
		}
	}
	for name := range cl {
		if !want[name] {
			t.Errorf("cluster.sql creates %s, which the application does not have", name)
		}
	}
	// Sharding keys evaluate on their local table and use only its sorting
	// key columns, so every copy of a row lands on the same shard.
	if len(dists) != mergeTrees {
		t.Errorf("%d Distributed tables for %d application tables", len(dists), mergeTrees)
	}
	for _, d := range dists {
		if err := conn.Exec(ctx, fmt.Sprintf("SELECT %s FROM %s.%s LIMIT 1", d.shardKey, clusterDB, d.local)); err != nil {
			t.Errorf("%s: sharding key %s: %v", d.name, d.shardKey, err)
		}
		sk := app[d.name].SortingKey
		for _, id := range regexp.MustCompile(`\b([a-z_]+)\b(\s*[^\s(]|\s*$)`).FindAllStringSubmatch(d.shardKey, -1) {
			if !regexp.MustCompile(`\b` + id[1] + `\b`).MatchString(sk) {
				t.Errorf("%s: sharding key %s uses %s, not in ORDER BY %s", d.name, d.shardKey, id[1], sk)
			}
		}
	}
	if t.Failed() {
		return
	}

	// The same events into both schemas give the same rollups, read
	// through the names the application uses.
	now := time.Now().UTC().Truncate(time.Second)
	type ev struct {
		key, outcome, ip string
		at               time.Time
	}
	evs := []ev{{"k1", "valid", "10.0.0.1", now}, {"k1", "valid", "10.0.0.2", now}, {"k1", "revoked", "10.0.0.1", now.Add(-time.Hour)},
		{"", "malformed", "10.0.0.9", now}, {"k2", "valid", "10.0.0.3", now.Add(-48 * time.Hour)}}
	for _, table := range []string{appDB + ".usage_events", clusterDB + ".usage_events_local"} {
		b, err := conn.PrepareBatch(ctx, "INSERT INTO "+table+" (event_id, ts, key_id, outcome, ip)")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if err := b.Append(uuid.New(), e.at, e.key, e.outcome, e.ip); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatalf("insert into %s: %v", table, err)
		}
	}
	for _, q := range []string{
		"SELECT toString(count()) FROM %s.usage_events",
		"SELECT concat(key_id, '|', toString(minute), '|', outcome, '|', toString(sum(count))) AS r FROM %s.usage_minute GROUP BY key_id, minute, outcome ORDER BY r",
		"SELECT concat(key_id, '|', ip, '|', toString(hour), '|', toString(sum(count))) AS r FROM %s.usage_key_ip_hour GROUP BY key_id, ip, hour ORDER BY r",
	} {
		got, want := chStrings(t, ctx, conn, fmt.Sprintf(q, clusterDB)), chStrings(t, ctx, conn, fmt.Sprintf(q, appDB))
		if len(want) == 0 || !slices.Equal(got, want) {
			t.Errorf("%s:\ncluster: %v\napp:     %v", q, got, want)
		}
	}
}

func chStrings(t *testing.T, ctx context.Context, conn driver.Conn, q string) []string {
	t.Helper()
	rows, err := conn.Query(ctx, q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// ----------------------------------------------- YAML, units and flags

// argFlags returns the --flag names in a list of arguments ("--x=y" or
// "--x y").
func argFlags(args []string) []string {
	var out []string
	for _, a := range args {
		if strings.HasPrefix(a, "--") {
			out = append(out, strings.SplitN(strings.TrimPrefix(a, "--"), "=", 2)[0])
		}
	}
	return out
}

// flagValue returns the value of --name in args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func strs(v any) []string {
	l, _ := v.([]any)
	var out []string
	for _, x := range l {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

func mapOf(v any, path ...string) map[string]any {
	for _, p := range path {
		m, _ := v.(map[string]any)
		v = m[p]
	}
	m, _ := v.(map[string]any)
	return m
}

func checkFlags(t *testing.T, known map[string]bool, where string, args []string) {
	t.Helper()
	if len(args) == 0 || args[0] != "serve" {
		t.Errorf("%s: command %v does not start with serve", where, args)
	}
	for _, f := range argFlags(args) {
		if !known[f] {
			t.Errorf("%s: keyledger serve has no flag --%s", where, f)
		}
	}
}

func TestComposeFile(t *testing.T) {
	known := serveFlags(t)
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(readFile(t, "docker-compose.yml")), &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	services := mapOf(doc, "services")
	var admins, verifiers []string
	for name, v := range services {
		svc := v.(map[string]any)
		if name == "clickhouse" {
			continue
		}
		b := mapOf(svc, "build")
		if b["dockerfile"] != "deploy/Dockerfile" || b["context"] != ".." {
			t.Errorf("%s: build %v, want context .. and deploy/Dockerfile", name, b)
		}
		args := strs(svc["command"])
		checkFlags(t, known, "docker-compose.yml "+name, args)
		role, _ := flagValue(args, "role")
		node, _ := flagValue(args, "node")
		if node != name {
			t.Errorf("%s: --node %q, want the service name", name, node)
		}
		if r, _ := flagValue(args, "replicas"); r != "3" {
			t.Errorf("%s: --replicas %q, want 3 (every node sets the streams' replicas)", name, r)
		}
		switch role {
		case "admin":
			admins = append(admins, name)
		case "verifier":
			verifiers = append(verifiers, name)
		default:
			t.Errorf("%s: --role %q", name, role)
		}
	}
	sort.Strings(admins)
	if !slices.Equal(admins, []string{"admin-1", "admin-2", "admin-3"}) || len(verifiers) != 2 || services["clickhouse"] == nil {
		t.Fatalf("want admin-1..3, 2 verifiers and clickhouse; got admins %v verifiers %v", admins, verifiers)
	}
	for _, name := range admins {
		args := strs(mapOf(services, name)["command"])
		routes, _ := flagValue(args, "routes")
		var want []string
		for _, other := range admins {
			if other != name {
				want = append(want, "nats-route://"+other+":6222")
			}
		}
		if routes != strings.Join(want, ",") {
			t.Errorf("%s: --routes %q, want %q", name, routes, strings.Join(want, ","))
		}
		if c, _ := flagValue(args, "cluster"); c != "0.0.0.0:6222" {
			t.Errorf("%s: --cluster %q", name, c)
		}
		if l, _ := flagValue(args, "nats-listen"); l != "0.0.0.0:4222" {
			t.Errorf("%s: --nats-listen %q: verifiers connect to it", name, l)
		}
		env := mapOf(services, name, "environment")
		if !strings.Contains(fmt.Sprint(env["KEYLEDGER_ADMIN_TOKEN"]), "${KEYLEDGER_ADMIN_TOKEN:?") {
			t.Errorf("%s: the admin token must come from the required variable KEYLEDGER_ADMIN_TOKEN", name)
		}
	}
	for _, name := range verifiers {
		n, _ := flagValue(strs(mapOf(services, name)["command"]), "nats")
		if n != "nats://admin-1:4222,nats://admin-2:4222,nats://admin-3:4222" {
			t.Errorf("%s: --nats %q", name, n)
		}
	}

	df := readFile(t, "Dockerfile")
	for _, want := range []string{"CGO_ENABLED=0 go build", "./cmd/keyledger", "FROM gcr.io/distroless/", `ENTRYPOINT ["/usr/local/bin/keyledger"]`} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if _, err := os.Stat("Dockerfile.dockerignore"); err != nil {
		t.Error(err)
	}
}

func TestKubernetesManifests(t *testing.T) {
	known := serveFlags(t)
	files, _ := filepath.Glob("k8s/*.yaml")
	if len(files) < 4 {
		t.Fatalf("k8s manifests: %v", files)
	}
	objs := map[string]map[string]any{} // kind/name
	for _, f := range files {
		dec := yaml.NewDecoder(strings.NewReader(readFile(t, f)))
		for {
			var o map[string]any
			err := dec.Decode(&o)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if o == nil {
				continue
			}
			kind, name := fmt.Sprint(o["kind"]), fmt.Sprint(mapOf(o, "metadata")["name"])
			if kind == "" || o["apiVersion"] == nil {
				t.Errorf("%s: object without kind/apiVersion", f)
			}
			if kind != "Kustomization" {
				objs[kind+"/"+name] = o
			}
		}
	}
	sts := objs["StatefulSet/keyledger-admin"]
	dep := objs["Deployment/keyledger-verifier"]
	if sts == nil || dep == nil {
		t.Fatalf("want StatefulSet/keyledger-admin and Deployment/keyledger-verifier; have %v", slices.Sorted(mapKeys(objs)))
	}
	spec := mapOf(sts, "spec")
	if spec["replicas"] != 3 || spec["podManagementPolicy"] != "Parallel" {
		t.Errorf("StatefulSet: replicas %v, podManagementPolicy %v: want 3 and Parallel (each pod waits for the others' quorum)",
			spec["replicas"], spec["podManagementPolicy"])
	}
	headless := objs["Service/"+fmt.Sprint(spec["serviceName"])]
	if headless == nil || mapOf(headless, "spec")["clusterIP"] != "None" || mapOf(headless, "spec")["publishNotReadyAddresses"] != true {
		t.Errorf("StatefulSet serviceName %v: want a headless Service publishing not-ready addresses", spec["serviceName"])
	}
	container := func(o map[string]any) map[string]any {
		cs, _ := mapOf(o, "spec", "template", "spec")["containers"].([]any)
		if len(cs) != 1 {
			t.Fatalf("want one container in %v", mapOf(o, "metadata")["name"])
		}
		return cs[0].(map[string]any)
	}
	admin, verifier := container(sts), container(dep)
	aargs, vargs := strs(admin["args"]), strs(verifier["args"])
	checkFlags(t, known, "StatefulSet keyledger-admin", aargs)
	checkFlags(t, known, "Deployment keyledger-verifier", vargs)

	routes, _ := flagValue(aargs, "routes")
	nurls, _ := flagValue(vargs, "nats")
	for i := range 3 {
		host := fmt.Sprintf("keyledger-admin-%d.%s", i, spec["serviceName"])
		if !strings.Contains(routes, "nats-route://"+host+":6222") {
			t.Errorf("--routes %q lacks %s:6222", routes, host)
		}
		if !strings.Contains(nurls, "nats://"+host+":4222") {
			t.Errorf("verifier --nats %q lacks %s:4222", nurls, host)
		}
	}
	if r, _ := flagValue(aargs, "replicas"); r != "3" {
		t.Errorf("admin --replicas %q", r)
	}
	if r, _ := flagValue(vargs, "replicas"); r != "3" {
		t.Errorf("verifier --replicas %q, want 3 (every node sets the streams' replicas)", r)
	}
	if r, _ := flagValue(vargs, "role"); r != "verifier" {
		t.Errorf("verifier --role %q", r)
	}
	// --data is the PersistentVolume of each admin pod.
	vcts, _ := spec["volumeClaimTemplates"].([]any)
	if len(vcts) != 1 {
		t.Fatalf("StatefulSet: want one volumeClaimTemplate")
	}
	claim := fmt.Sprint(mapOf(vcts[0], "metadata")["name"])
	data, _ := flagValue(aargs, "data")
	mounted := false
	for _, vm := range admin["volumeMounts"].([]any) {
		m := vm.(map[string]any)
		mounted = mounted || (m["name"] == claim && m["mountPath"] == data)
	}
	if !mounted {
		t.Errorf("--data %s is not the PVC %s", data, claim)
	}
	// Probes.
	probe := func(c map[string]any, kind string) string { return fmt.Sprint(mapOf(c, kind, "httpGet")["path"]) }
	if probe(verifier, "readinessProbe") != "/readyz" || probe(verifier, "livenessProbe") != "/healthz" ||
		probe(admin, "readinessProbe") != "/readyz" || probe(admin, "livenessProbe") != "/healthz" {
		t.Errorf("probes: want readiness /readyz and liveness /healthz on both")
	}
	// The admin token comes from the Secret.
	secretRef := ""
	for _, e := range admin["env"].([]any) {
		m := e.(map[string]any)
		if m["name"] == "KEYLEDGER_ADMIN_TOKEN" {
			secretRef = fmt.Sprint(mapOf(m, "valueFrom", "secretKeyRef")["name"])
		}
	}
	if secretRef == "" || objs["Secret/"+secretRef] == nil {
		t.Errorf("KEYLEDGER_ADMIN_TOKEN must come from a Secret in the manifests (ref %q)", secretRef)
	} else if tok := fmt.Sprint(mapOf(objs["Secret/"+secretRef], "stringData")["token"]); len(tok) >= 16 {
		t.Errorf("the placeholder token %q is long enough to be accepted; keep it under 16 characters", tok)
	}
	for _, svc := range []string{"Service/keyledger-admin", "Service/keyledger-verifier"} {
		if objs[svc] == nil {
			t.Errorf("no %s", svc)
		}
	}

	// kubectl's own kustomize build, where kubectl is installed.
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, kubectl, "kustomize", "k8s").CombinedOutput()
		if err != nil {
			t.Errorf("kubectl kustomize deploy/k8s: %v\n%s", err, out)
		} else if n := bytes.Count(append([]byte("\n"), out...), []byte("\nkind: ")); n != len(objs) {
			t.Errorf("kubectl kustomize rendered %d objects, the files hold %d", n, len(objs))
		}
	} else {
		t.Log("kubectl not installed: kustomization not rendered")
	}
}

func mapKeys[M ~map[string]V, V any](m M) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// unit is a parsed systemd unit: key → values, ExecStart as arguments.
type unit struct {
	keys map[string][]string
	exec []string
}

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	u := unit{keys: map[string][]string{}}
	sc := bufio.NewScanner(strings.NewReader(readFile(t, path)))
	var cont strings.Builder
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cont.WriteString(s + " ")
			continue
		}
		line = cont.String() + line
		cont.Reset()
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: bad line %q", path, line)
			continue
		}
		u.keys[k] = append(u.keys[k], v)
		if k == "ExecStart" {
			u.exec = strings.Fields(v)
		}
	}
	return u
}

// envFile returns the variables an env file sets.
func envFile(t *testing.T, path string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, line := range strings.Split(readFile(t, path), "\n") {
		line = strings.TrimSpace(line)
		if k, _, ok := strings.Cut(line, "="); ok && line[0] != '#' {
			out[k] = true
		}
	}
	return out
}

func TestSystemdUnits(t *testing.T) {
	known := serveFlags(t)
	units := map[string][]string{ // unit → env files a deployment installs
		"systemd/keyledger-admin.service":    {"systemd/keyledger.env", "systemd/secrets.env.example"},
		"systemd/keyledger-verifier.service": {"systemd/verifier.env"},
		"systemd/nats-server.service":        nil,
	}
	for path, envs := range units {
		u := parseUnit(t, path)
		for k, want := range map[string]string{
			"Restart": "on-failure", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "DynamicUser": "yes",
			"PrivateTmp": "yes", "ProtectHome": "yes", "CapabilityBoundingSet": "",
		} {
			if !slices.Contains(u.keys[k], want) {
				t.Errorf("%s: want %s=%s", path, k, want)
			}
		}
		if len(u.keys["EnvironmentFile"]) == 0 || len(u.keys["StateDirectory"]) == 0 {
			t.Errorf("%s: want an EnvironmentFile and a StateDirectory", path)
		}
		if strings.HasSuffix(u.exec[0], "/nats-server") {
			if c := strings.Join(u.exec, " "); !strings.Contains(c, "-c /etc/nats/nats-server.conf") {
				t.Errorf("%s: ExecStart %q", path, c)
			}
			continue
		}
		checkFlags(t, known, path, u.exec[1:])
		// Every variable the command line uses is set by the env files.
		vars := map[string]bool{}
		for _, e := range envs {
			for k := range envFile(t, e) {
				vars[k] = true
			}
		}
		for _, m := range regexp.MustCompile(`\$\{(\w+)\}`).FindAllStringSubmatch(strings.Join(u.exec, " "), -1) {
			if !vars[m[1]] {
				t.Errorf("%s: ExecStart uses ${%s}, which %v do not set", path, m[1], envs)
			}
		}
		if path == "systemd/keyledger-admin.service" && !envFile(t, "systemd/secrets.env.example")["KEYLEDGER_ADMIN_TOKEN"] {
			t.Errorf("secrets.env.example does not hold KEYLEDGER_ADMIN_TOKEN")
		}
	}

	// systemd's own checker, where installed: unknown keys, bad values.
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: units not verified by systemd")
		return
	}
	dir := t.TempDir()
	bin := keyledgerBinary(t)
	var names []string
	for path := range units {
		s := readFile(t, path)
		s = strings.ReplaceAll(s, "/usr/local/bin/keyledger", bin)
		s = strings.ReplaceAll(s, "/usr/local/bin/nats-server", "/bin/true")
		name := filepath.Join(dir, filepath.Base(path))
		if err := os.WriteFile(name, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sa, append([]string{"verify"}, names...)...).CombinedOutput()
	var filtered []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// Not about our units: a container without a running systemd.
		if l == "" || strings.Contains(l, "Failed to connect to bus") || strings.Contains(l, "System has not been booted with systemd") {
			continue
		}
		filtered = append(filtered, l)
	}
	if err != nil || len(filtered) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(filtered, "\n"))
	}
}

// ------------------------------------------------------- local-cluster.sh

func TestLocalClusterScript(t *testing.T) {
	known := serveFlags(t)
	script := readFile(t, "local-cluster.sh")
	var used []string
	for _, m := range regexp.MustCompile(`(?m)^\s+--([a-z][a-z0-9-]*)\b.*\\$`).FindAllStringSubmatch(script, -1) {
		used = append(used, "--"+m[1])
	}
	if len(used) < 8 {
		t.Fatalf("found only %v as serve flags in local-cluster.sh", used)
	}
	checkFlags(t, known, "local-cluster.sh", append([]string{"serve"}, used...))
	if out, err := exec.Command("bash", "-n", "local-cluster.sh").CombinedOutput(); err != nil {
		t.Fatalf("bash -n local-cluster.sh: %v\n%s", err, out)
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("local-cluster.sh needs curl")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	bases := freeBases(t, 3, 3)
	env := append(os.Environ(),
		"KEYLEDGER_CLUSTER_DIR="+dir,
		"KEYLEDGER_BIN="+keyledgerBinary(t),
		fmt.Sprintf("KEYLEDGER_CLUSTER_HTTP_PORT=%d", bases[0]),
		fmt.Sprintf("KEYLEDGER_CLUSTER_NATS_PORT=%d", bases[1]),
		fmt.Sprintf("KEYLEDGER_CLUSTER_ROUTE_PORT=%d", bases[2]),
		"KEYLEDGER_CLUSTER_WAIT=45",
	)
	runCtx := func(ctx context.Context, arg string) (string, error) {
		cmd := exec.CommandContext(ctx, "bash", "local-cluster.sh", arg)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	run := func(arg string) (string, error) { return runCtx(ctx, arg) }
	var pids []int
	stopped := false
	t.Cleanup(func() {
		if stopped {
			return
		}
		// The test's own context is cancelled by now: stop with a fresh
		// one, and kill what is left if even that fails, so no node
		// outlives the test.
		sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if out, err := runCtx(sctx, "stop"); err != nil {
			t.Logf("stop: %v\n%s", err, out)
			for _, p := range pids {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	start := time.Now()
	out, err := run("start")
	if err != nil {
		t.Fatalf("local-cluster.sh start: %v\n%s", err, out)
	}
	t.Logf("3 nodes ready in %v", time.Since(start).Round(time.Millisecond))
	for i := 1; i <= 3; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("n%d.pid", i)))
		if err != nil {
			t.Fatal(err)
		}
		p, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, p)
		if url := fmt.Sprintf("http://127.0.0.1:%d", bases[0]+i-1); !strings.Contains(out, url) {
			t.Errorf("start does not print %s:\n%s", url, out)
		}
	}
	if !strings.Contains(out, filepath.Join(dir, "admin-token")) {
		t.Errorf("start does not say where the admin token is:\n%s", out)
	}
	if out, err := run("status"); err != nil || strings.Count(out, " ready ") != 3 {
		t.Errorf("status: %v\n%s", err, out)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	node := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", bases[0]+i-1) }

	// Create on node 1 and wait for every node to apply it.
	var created struct {
		ID        string `json:"id"`
		Key       string `json:"key"`
		AppliedBy string `json:"applied_by"`
	}
	// A cluster that has just formed may still be settling its stream
	// leaders, during which a node's consumer can lag for a moment; wait
	// (bounded) for a create that every node applied before going on.
	var code int
	for deadline := time.Now().Add(20 * time.Second); ; {
		code = call(t, ctx, "POST", node(1)+"/v1/keys?wait=all", token, `{"name":"x","environment":"live"}`, &created)
		if code != http.StatusCreated || created.ID == "" || created.Key == "" {
			t.Fatalf("create on n1: %d %+v", code, created)
		}
		if created.AppliedBy == "3/3" || time.Now().After(deadline) {
			break
		}
	}
	for _, i := range []int{2, 3} {
		if code := call(t, ctx, "GET", node(i)+"/v1/authz", created.Key, "", nil); code != http.StatusOK {
			t.Errorf("new key on n%d: %d, want 200 (create said applied_by %q)", i, code, created.AppliedBy)
		}
	}
	var revoked struct {
		Status    string `json:"status"`
		AppliedBy string `json:"applied_by"`
	}
	if code := call(t, ctx, "POST", node(1)+"/v1/keys/"+created.ID+"/revoke", token, "", &revoked); code != http.StatusOK || revoked.AppliedBy != "3/3" {
		t.Fatalf("revoke on n1: %d %+v, want 200 applied_by 3/3", code, revoked)
	}
	// applied_by 3/3: the other nodes refuse the key from now on.
	for _, i := range []int{2, 3} {
		if code := call(t, ctx, "GET", node(i)+"/v1/authz", created.Key, "", nil); code != http.StatusUnauthorized {
			t.Errorf("revoked key on n%d right after the revoke: %d, want 401", i, code)
		}
	}

	stopped = true
	if out, err := run("stop"); err != nil {
		t.Fatalf("local-cluster.sh stop: %v\n%s", err, out)
	}
	for _, p := range pids {
		if alive(p) {
			t.Errorf("pid %d still running after stop", p)
		}
	}
	for i := 1; i <= 3; i++ {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", bases[0]+i-1), time.Second); err == nil {
			c.Close()
			t.Errorf("n%d still listens after stop", i)
		}
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("n%d.pid", i))); err == nil {
			t.Errorf("n%d.pid left behind", i)
		}
	}
	if out, err := run("status"); err == nil || strings.Count(out, "stopped") != 3 {
		t.Errorf("status after stop: %v\n%s", err, out)
	}
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// freeBases returns n port numbers p such that p, p+1, ..., p+width-1 are
// all free on loopback, none overlapping.
func freeBases(t *testing.T, n, width int) []int {
	t.Helper()
	var bases []int
	taken := map[int]bool{}
	for p := 20000 + int(time.Now().UnixNano()%20000); len(bases) < n && p < 60000; p += width + 7 {
		ok := true
		for k := range width {
			if taken[p+k] {
				ok = false
				break
			}
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+k))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			bases = append(bases, p)
			for k := range width {
				taken[p+k] = true
			}
		}
	}
	if len(bases) < n {
		t.Fatal("no free port ranges")
	}
	return bases
}

// call sends one request with a bearer token and decodes a JSON answer.
func call(t *testing.T, ctx context.Context, method, url, bearer, body string, into any) int {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+bearer)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if into != nil {
		if err := json.Unmarshal(b, into); err != nil {
			t.Errorf("%s %s: %d %s: %v", method, url, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}
