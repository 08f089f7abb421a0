// Checks of the files in deploy/: each one is parsed by the tool that will
// read it (nats-server's own config parser, ClickHouse, a YAML parser,
// systemd-analyze and kubectl when installed, the keyledger binary's flag
// set), and the ones that can run here are run: the NATS configs as a real
// 3-server JetStream cluster with the systemd units' admin and verifier
// nodes on it, the ClickHouse cluster DDL on the local ClickHouse
// (replication swapped out), local-cluster.sh as 3 processes and a
// verifier. Credentials come from running the generation commands each
// file documents, with the built binary. Everything listens on loopback
// only.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
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
	"syscall"
	"testing"
	"time"

	"github.com/keyledger/keyledger/internal/buildtest"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/events"
	klnats "github.com/keyledger/keyledger/nats"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"
)

func TestMain(m *testing.M) {
	code := m.Run()
	buildtest.Cleanup()
	os.Exit(code)
}

// serveFlags returns the flag names `keyledger serve -h` lists.
func serveFlags(t *testing.T) map[string]bool {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(buildtest.Keyledger(t), "serve", "-h")
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

// natsInstall is the external NATS cluster as the documented commands of
// systemd/nats-server.service install it: the fleet's credentials
// generated (work/creds), the route URLs written, and for each server the
// directory systemd hands it (its LoadCredential= lines, each file taken
// from the install line that puts it there), with nats-server.conf and
// everything it includes.
type natsInstall struct {
	work  string // where the documented commands ran: work/creds
	fleet fleetFile
	confs []string // each server's nats-server.conf, as ExecStart names it
}

func installNATS(t *testing.T) natsInstall {
	t.Helper()
	const unitPath = "systemd/nats-server.service"
	text := readFile(t, unitPath)
	in := natsInstall{work: t.TempDir()}
	_, in.fleet = runCredsGenerate(t, in.work, docCommand(t, text, "creds generate"))
	routeURLs(t, in.work, docCommand(t, text, "route-urls.sh"))
	if st, err := os.Stat(filepath.Join(in.work, "creds", "nats-route-urls.conf")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("route-urls.sh output (it holds the route password): %v, want mode 0600", err)
	}
	u := parseUnit(t, unitPath)
	for i := range natsNodes {
		dir := loadCredentials(t, unitPath, u, func(src string) string {
			if s, ok := strings.CutPrefix(src, "deploy/"); ok {
				return strings.ReplaceAll(s, "nats-N.conf", fmt.Sprintf("nats-%d.conf", i+1))
			}
			return filepath.Join(in.work, src)
		})
		args := execStart(t, unitPath, u, "nats-server", map[string]string{"CREDENTIALS_DIRECTORY": dir})
		c := slices.Index(args, "-c")
		if c < 0 || c+1 >= len(args) {
			t.Fatalf("%s: ExecStart %q has no -c CONFIG", unitPath, args)
		}
		in.confs = append(in.confs, args[c+1])
	}
	return in
}

// memberWith returns the first member of f with role r.
func memberWith(t *testing.T, f fleetFile, r string) string {
	t.Helper()
	for _, m := range f.Members {
		if slices.Contains(m.Roles, r) {
			return m.Name
		}
	}
	t.Fatalf("the fleet has no %s member", r)
	return ""
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

func TestNATSConfigs(t *testing.T) {
	// Without the generated files the configs do not parse: there is no
	// way to run them without authentication.
	bare := t.TempDir()
	for src, dst := range map[string]string{natsNodes[0]: "nats-server.conf", "nats/common.conf": "common.conf"} {
		if err := os.WriteFile(filepath.Join(bare, dst), []byte(readFile(t, src)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := server.ProcessConfigFile(filepath.Join(bare, "nats-server.conf")); err == nil || !strings.Contains(err.Error(), "nats-auth.conf") {
		t.Errorf("%s parses without the generated nats-auth.conf (err %v): clients must authenticate", natsNodes[0], err)
	}

	in := installNATS(t)
	fleet := in.fleet
	if fleet.Routes == nil || fleet.Routes.Password == "" {
		t.Fatalf("the documented creds generate makes no route credentials: %+v", fleet)
	}
	admin, verifier, operator := memberWith(t, fleet, "admin"), memberWith(t, fleet, "verifier"), memberWith(t, fleet, "operator")
	opts := make([]*server.Options, len(natsNodes))
	names := map[string]bool{}
	for i, f := range in.confs {
		where := natsNodes[i]
		o, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		opts[i] = o
		if !o.JetStream {
			t.Errorf("%s: JetStream is off", where)
		}
		if !o.SyncAlways {
			t.Errorf("%s: jetstream sync_interval is not always", where)
		}
		if o.StoreDir == "" {
			t.Errorf("%s: no JetStream store_dir", where)
		}
		if o.ServerName == "" || names[o.ServerName] {
			t.Errorf("%s: server_name %q is empty or not unique", where, o.ServerName)
		}
		names[o.ServerName] = true
		if want := fmt.Sprintf("nats-%d", i+1); o.ServerName != want {
			t.Errorf("%s: server_name %q, want %q (routes name the hosts nats-1..3)", where, o.ServerName, want)
		}
		if o.Port == 0 || o.Cluster.Port == 0 || o.Port == o.Cluster.Port || o.HTTPPort == o.Port || o.HTTPPort == o.Cluster.Port {
			t.Errorf("%s: client %d, cluster %d and monitoring %d ports must be set and distinct", where, o.Port, o.Cluster.Port, o.HTTPPort)
		}
		if o.Cluster.Name != "keyledger" {
			t.Errorf("%s: cluster name %q", where, o.Cluster.Name)
		}
		// No anonymous access: no default user, no passwords or token,
		// only the fleet's nkeys, each with its permissions.
		if o.NoAuthUser != "" || len(o.Users) != 0 || o.Username != "" || o.Authorization != "" {
			t.Errorf("%s: no_auth_user %q, %d password users, user %q, token set %v: want nkey users only",
				where, o.NoAuthUser, len(o.Users), o.Username, o.Authorization != "")
		}
		perms := map[string]*server.Permissions{}
		for _, nk := range o.Nkeys {
			p := nk.Permissions
			if p == nil || p.Publish == nil || p.Subscribe == nil || (len(p.Publish.Allow) == 0 && !slices.Contains(fleet.roles(memberOf(fleet, nk.Nkey)), "operator")) {
				t.Errorf("%s: nkey user %s without publish and subscribe permissions", where, nk.Nkey)
			}
			perms[nk.Nkey] = p
		}
		for _, m := range fleet.Members {
			if perms[m.NKey] == nil {
				t.Errorf("%s: fleet member %s is not a user", where, m.Name)
			}
		}
		if len(o.Nkeys) != len(fleet.Members) {
			t.Errorf("%s: %d nkey users for %d fleet members", where, len(o.Nkeys), len(fleet.Members))
		}
		// What the roles may publish, as the server will enforce it.
		for _, c := range []struct {
			member, subject string
			want            bool
		}{
			{verifier, "keyledger.keys.k_deploytest", false},
			{verifier, "$JS.API.STREAM.DELETE.KEYS", false},
			{verifier, "$JS.API.STREAM.UPDATE.KEYS", false},
			{verifier, "$JS.API.STREAM.PURGE.KEYS", false},
			{verifier, "$JS.API.STREAM.CREATE.KEYS", false},
			{verifier, "keyledger.usage.live.batch." + admin, false},
			{verifier, "keyledger.usage.live.batch." + verifier, true},
			{verifier, "$JS.API.STREAM.INFO.KEYS", true},
			{admin, "keyledger.keys.k_deploytest", true},
			{admin, "$JS.API.STREAM.DELETE.KEYS", false},
			{admin, "$JS.API.STREAM.UPDATE.KEYS", false},
			{admin, "$JS.API.STREAM.PURGE.KEYS", false},
			{operator, "$JS.API.STREAM.DELETE.KEYS", true},
		} {
			if got := mayPublish(perms[fleet.nkey(c.member)], c.subject); got != c.want {
				t.Errorf("%s: %s may publish %s: %v, want %v", where, c.member, c.subject, got, c.want)
			}
		}
		// Monitoring on loopback only (or off).
		if o.HTTPPort != 0 && !isLoopback(o.HTTPHost) || o.HTTPSPort != 0 && !isLoopback(o.HTTPHost) {
			t.Errorf("%s: monitoring on %q port %d/%d: want loopback only or off", where, o.HTTPHost, o.HTTPPort, o.HTTPSPort)
		}
		// Routes authenticate: nats-routes.conf's user is required on the
		// cluster port, and presented in every route URL.
		if o.Cluster.Username != fleet.Routes.Username || o.Cluster.Password != fleet.Routes.Password {
			t.Errorf("%s: cluster authorization %q: want the generated route user and password", where, o.Cluster.Username)
		}
	}
	// Each server routes to all three (itself dropped), with the route
	// credentials, at their cluster ports.
	for i, o := range opts {
		var got, want []string
		for _, u := range o.Routes {
			p, _ := u.User.Password()
			if u.User.Username() != fleet.Routes.Username || p != fleet.Routes.Password {
				t.Errorf("%s: route %s does not carry the route credentials", natsNodes[i], u.Redacted())
			}
			got = append(got, u.Scheme+"://"+u.Host)
		}
		for _, p := range opts {
			want = append(want, fmt.Sprintf("nats-route://%s:%d", p.ServerName, p.Cluster.Port))
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
	ports := buildtest.FreePorts(t, 3)
	index := map[string]int{}
	for i, o := range opts {
		index[fmt.Sprintf("%s:%d", o.ServerName, o.Cluster.Port)] = i
	}
	servers := make([]*server.Server, 3)
	storeDirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	clientPorts := []int{server.RANDOM_PORT, server.RANDOM_PORT, server.RANDOM_PORT}
	moveToLoopback := func(i int, o *server.Options) {
		o.Host, o.Port = "127.0.0.1", clientPorts[i]
		o.HTTPHost, o.HTTPPort = "", 0
		o.Cluster.Host, o.Cluster.Port = "127.0.0.1", ports[i]
		for _, u := range o.Routes {
			u.Host = fmt.Sprintf("127.0.0.1:%d", ports[index[u.Host]])
		}
		o.StoreDir = storeDirs[i]
		o.NoSigs, o.NoLog = true, true
	}
	var clientURLs []string
	for i, o := range opts {
		moveToLoopback(i, o)
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
		clientURLs = append(clientURLs, s.ClientURL())
		clientPorts[i] = s.Addr().(*net.TCPAddr).Port
	}
	urls := strings.Join(clientURLs, ",")
	if nc, err := nats.Connect(servers[0].ClientURL(), nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Errorf("a client without credentials was let in")
	}
	// An nkey of another fleet is no better.
	strangers, _ := runCredsGenerate(t, t.TempDir(), []string{"keyledger", "creds", "generate", "--dir", "x", "stranger=admin"})
	if opt, err := nats.NkeyOptionFromSeed(filepath.Join(strangers, "stranger.nk")); err != nil {
		t.Fatal(err)
	} else if nc, err := nats.Connect(servers[0].ClientURL(), opt, nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Errorf("a client with an nkey the fleet does not list was let in")
	}
	// A route that does not authenticate is refused.
	checkRouteRefused(t, fmt.Sprintf("127.0.0.1:%d", ports[0]))

	// The break-glass operator may create any stream: an R3 file stream
	// needs all three servers in one JetStream cluster, so routes work.
	nc, _ := natsAs(t, urls, operator, filepath.Join(in.work, "creds", operator+".nk"))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
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
		time.Sleep(200 * time.Millisecond) // the cluster is electing its meta leader; retry bounded by ctx
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

	// The systemd units of an admin and a verifier node, run as systemd
	// would (their env files, their LoadCredential= directories) against
	// this cluster: the generated permissions are enough for keyledger
	// itself, and a verifier needs only its nkey and the keyring.
	unitsOnExternalNATS(t, ctx, in, urls)

	// What the server refuses, to the nodes' own nkeys.
	seed := func(m string) string { return filepath.Join(in.work, "creds", m+".nk") }
	vnc, verrs := natsAs(t, urls, verifier, seed(verifier))
	for _, s := range []string{"keyledger.keys.k_deploytest", "$JS.API.STREAM.DELETE.KEYS", "$JS.API.STREAM.PURGE.KEYS",
		"$JS.API.STREAM.UPDATE.KEYS", "keyledger.usage.live.batch." + admin} {
		expectDenied(t, verifier, vnc, verrs, s)
	}
	if msg, err := vnc.Request("$JS.API.STREAM.INFO.KEYS", nil, 5*time.Second); err != nil || !strings.Contains(string(msg.Data), `"name":"KEYS"`) {
		t.Errorf("%s cannot read KEYS' stream info: %v", verifier, err)
	}
	anc, aerrs := natsAs(t, urls, admin, seed(admin))
	for _, s := range []string{"$JS.API.STREAM.DELETE.KEYS", "$JS.API.STREAM.UPDATE.KEYS", "$JS.API.STREAM.PURGE.KEYS"} {
		expectDenied(t, admin, anc, aerrs, s)
	}
	keys, err := js.Stream(ctx, "KEYS")
	if err != nil {
		t.Fatalf("KEYS after the refused deletes: %v", err)
	}
	if c := keys.CachedInfo(); c.Config.Replicas != 3 || c.State.Msgs == 0 {
		t.Errorf("KEYS: %d replicas, %d events: want the admin node's R3 stream with its create", c.Config.Replicas, c.State.Msgs)
	}

	// Rotating a member's nkey as deploy/README.md describes it: a new
	// key for the same name and roles, its public key swapped into
	// nats-auth.conf, the servers reloaded. The old seed is refused, the
	// new one has the member's permissions.
	rot, rotFleet := runCredsGenerate(t, t.TempDir(), []string{"keyledger", "creds", "generate", "--dir", "rot", verifier + "=verifier", "scratch=admin"})
	oldKey, newKey := fleet.nkey(verifier), rotFleet.nkey(verifier)
	for i, s := range servers {
		auth := filepath.Join(filepath.Dir(in.confs[i]), "nats-auth.conf")
		text := readFile(t, auth)
		if strings.Count(text, oldKey) != 1 {
			t.Fatalf("nats-auth.conf holds %s's public key %d times, want once", verifier, strings.Count(text, oldKey))
		}
		if err := os.WriteFile(auth, []byte(strings.Replace(text, oldKey, newKey, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		o, err := server.ProcessConfigFile(in.confs[i])
		if err != nil {
			t.Fatalf("%s after the rotation: %v", natsNodes[i], err)
		}
		moveToLoopback(i, o)
		if err := s.ReloadOptions(o); err != nil {
			t.Fatalf("%s: reload after the rotation: %v", natsNodes[i], err)
		}
	}
	vnc.Close()
	if opt, err := nats.NkeyOptionFromSeed(seed(verifier)); err != nil {
		t.Fatal(err)
	} else if nc, err := nats.Connect(urls, opt, nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Errorf("%s's old nkey is still let in after the rotation", verifier)
	}
	rnc, rerrs := natsAs(t, urls, verifier, filepath.Join(rot, verifier+".nk"))
	expectDenied(t, verifier+" (rotated)", rnc, rerrs, "keyledger.keys.k_deploytest")
	if _, err := rnc.Request("$JS.API.STREAM.INFO.KEYS", nil, 5*time.Second); err != nil {
		t.Errorf("%s's new nkey cannot read KEYS' stream info: %v", verifier, err)
	}
}

// checkRouteRefused dials a cluster port and presents no credentials: the
// server must announce that routes authenticate and refuse the CONNECT.
func checkRouteRefused(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("route port %s: %v", addr, err)
	}
	var info struct {
		AuthRequired bool `json:"auth_required"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimSpace(line), "INFO ")), &info); err != nil || !info.AuthRequired {
		t.Errorf("route port %s: INFO %q: want auth_required", addr, line)
	}
	fmt.Fprint(c, "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"intruder\",\"cluster\":\"keyledger\"}\r\nPING\r\n")
	rest, _ := io.ReadAll(r) // the server closes the connection
	if !strings.Contains(string(rest), "Authorization Violation") || strings.Contains(string(rest), "PONG") {
		t.Errorf("route port %s let a route without credentials in: %q", addr, rest)
	}
}

// memberOf returns the fleet member with public nkey nk.
func memberOf(f fleetFile, nk string) string {
	for _, m := range f.Members {
		if m.NKey == nk {
			return m.Name
		}
	}
	return ""
}

// unitsOnExternalNATS runs keyledger-admin.service and
// keyledger-verifier.service against the cluster at urls: a key created
// on the admin node verifies on the verifier.
func unitsOnExternalNATS(t *testing.T, ctx context.Context, in natsInstall, urls string) {
	t.Helper()
	bin := buildtest.Keyledger(t)
	resolve := func(src string) string { return filepath.Join(in.work, src) }
	ports := buildtest.FreePorts(t, 2)
	token := "kla_deploytest_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	run := func(path string, envs []string, overrides map[string]string) *proc {
		u := parseUnit(t, path)
		vars := map[string]string{}
		for _, e := range envs {
			for k, v := range envValues(t, e) {
				vars[k] = v
			}
		}
		for k, v := range overrides {
			vars[k] = v
		}
		vars["CREDENTIALS_DIRECTORY"] = loadCredentials(t, path, u, resolve)
		args := execStart(t, path, u, bin, vars)
		env := cleanEnv()
		for k, v := range vars {
			env = append(env, k+"="+v)
		}
		// --data last: the unit's state directory is the test's.
		p := startServe(t, path, "http://"+vars["KEYLEDGER_HTTP"], env, append(args[1:], "--data", t.TempDir()))
		p.waitReady(t, 60*time.Second)
		return p
	}
	admin := run("systemd/keyledger-admin.service", []string{"systemd/keyledger.env", "systemd/secrets.env.example"}, map[string]string{
		"KEYLEDGER_NATS": urls, "KEYLEDGER_CLUSTER": "", "KEYLEDGER_ROUTES": "", "KEYLEDGER_NATS_LISTEN": "",
		"KEYLEDGER_HTTP": fmt.Sprintf("127.0.0.1:%d", ports[0]), "KEYLEDGER_ADMIN_TOKEN": token,
	})
	var created struct {
		Key string `json:"key"`
	}
	if code := call(t, ctx, "POST", admin.url+"/v1/keys", token, `{"name":"deploytest","environment":"live"}`, &created); code != http.StatusCreated || created.Key == "" {
		t.Fatalf("create on the admin unit: %d\n%s", code, admin.out.String())
	}
	verifier := run("systemd/keyledger-verifier.service", []string{"systemd/verifier.env"}, map[string]string{
		"KEYLEDGER_NATS": urls, "KEYLEDGER_HTTP": fmt.Sprintf("127.0.0.1:%d", ports[1]),
	})
	if code := call(t, ctx, "GET", verifier.url+"/v1/authz", created.Key, "", nil); code != http.StatusOK {
		t.Errorf("the verifier unit answers %d for a key the admin unit created, want 200\n%s", code, verifier.out.String())
	}
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
	text := readFile(t, "docker-compose.yml")
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	services := mapOf(doc, "services")

	// The documented one-time generation, run from a stand-in for the
	// repository root: every file a container mounts must come out of it.
	root := t.TempDir()
	gen := docCommand(t, text, "creds generate")
	_, fleet := runCredsGenerate(t, root, gen)
	if d, _ := flagValue(gen, "dir"); d != "deploy/creds" {
		t.Errorf("creds generate --dir %q: want deploy/creds, next to the compose file", d)
	}
	if !strings.Contains(readFile(t, ".gitignore"), "/creds/") || !strings.Contains(readFile(t, "Dockerfile.dockerignore"), "deploy/creds") {
		t.Errorf("deploy/creds must be ignored by git (deploy/.gitignore) and kept out of the image's build context (Dockerfile.dockerignore)")
	}
	composeDir := filepath.Join(root, "deploy")

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
		checkNodeName(t, "docker-compose.yml", node)
		// Only the HTTP port reaches the host, on loopback: not NATS
		// (4222, 6222), not monitoring.
		if p := strs(svc["ports"]); len(p) != 1 || !regexp.MustCompile(`^127\.0\.0\.1:\d+:8080$`).MatchString(p[0]) {
			t.Errorf("%s: ports %v: want only 127.0.0.1:PORT:8080", name, p)
		}
		// Credentials: bind mounts of single generated files, read-only,
		// never created on the host when missing.
		mounts := map[string]string{} // target → file name
		for _, v := range svc["volumes"].([]any) {
			m, ok := v.(map[string]any)
			if !ok {
				continue // a named volume (admin data)
			}
			src, target := fmt.Sprint(m["source"]), fmt.Sprint(m["target"])
			if m["type"] != "bind" || m["read_only"] != true || mapOf(m, "bind")["create_host_path"] != false {
				t.Errorf("%s: mount of %s: want type bind, read_only, bind.create_host_path false", name, src)
			}
			if _, err := os.Stat(filepath.Join(composeDir, src)); err != nil {
				t.Errorf("%s mounts %s, which the documented creds generate does not write", name, src)
			}
			mounts[target] = filepath.Base(src)
		}
		var want []string
		switch role {
		case "admin":
			admins = append(admins, name)
			dir, _ := flagValue(args, "credentials")
			want = []string{"fleet.json", "trusted-signers", name + ".nk", name + ".signing-key"}
			for _, f := range want {
				if mounts[dir+"/"+f] != f {
					t.Errorf("%s: --credentials %s holds no %s", name, dir, f)
				}
			}
			if r := fleet.roles(name); !slices.Contains(r, "admin") || !slices.Contains(r, "analytics") {
				t.Errorf("%s: the fleet gives it %v: want admin and analytics (it runs analytics)", name, r)
			}
		case "verifier":
			verifiers = append(verifiers, name)
			want = []string{name + ".nk", "trusted-signers"}
			nk, _ := flagValue(args, "nats-nkey")
			ts, _ := flagValue(args, "trusted-signers")
			if mounts[nk] != name+".nk" || mounts[ts] != "trusted-signers" {
				t.Errorf("%s: --nats-nkey %q and --trusted-signers %q are not its mounted nkey and keyring", name, nk, ts)
			}
			if r := fleet.roles(name); !slices.Equal(r, []string{"verifier"}) {
				t.Errorf("%s: the fleet gives it %v: want verifier only", name, r)
			}
			for _, f := range []string{"credentials", "fleet", "signing-key", "replicas", "usage-max-age"} {
				if _, ok := flagValue(args, f); ok {
					t.Errorf("%s: a verifier takes no --%s", name, f)
				}
			}
		default:
			t.Errorf("%s: --role %q", name, role)
		}
		got := slices.Sorted(maps.Values(mounts))
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s mounts %v: want exactly %v", name, got, want)
		}
	}
	sort.Strings(admins)
	if !slices.Equal(admins, []string{"admin-1", "admin-2", "admin-3"}) || len(verifiers) != 2 || services["clickhouse"] == nil {
		t.Fatalf("want admin-1..3, 2 verifiers and clickhouse; got admins %v verifiers %v", admins, verifiers)
	}
	for _, m := range fleet.Members {
		if services[m.Name] == nil && !slices.Equal(m.Roles, []string{"operator"}) {
			t.Errorf("the fleet lists %s, which is no service", m.Name)
		}
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
		if r, _ := flagValue(args, "replicas"); r != "3" {
			t.Errorf("%s: --replicas %q, want 3 (admin nodes create the streams)", name, r)
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

// checkNodeName: a node name is a NATS subject token and inbox prefix.
func checkNodeName(t *testing.T, where, name string) {
	t.Helper()
	if err := klnats.ValidName(name); err != nil {
		t.Errorf("%s: node name %q: %v", where, name, err)
	}
}

// k8sObjects decodes every object of the given manifest files.
func k8sObjects(t *testing.T, files ...string) map[string]map[string]any {
	t.Helper()
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
	return objs
}

func TestKubernetesManifests(t *testing.T) {
	known := serveFlags(t)
	files, _ := filepath.Glob("k8s/*.yaml")
	if len(files) < 4 {
		t.Fatalf("k8s manifests: %v", files)
	}
	objs := k8sObjects(t, files...)
	sts := objs["StatefulSet/keyledger-admin"]
	vsts := objs["StatefulSet/keyledger-verifier"]
	if sts == nil || vsts == nil {
		t.Fatalf("want StatefulSet/keyledger-admin and StatefulSet/keyledger-verifier; have %v", slices.Sorted(mapKeys(objs)))
	}
	spec, vspec := mapOf(sts, "spec"), mapOf(vsts, "spec")
	if spec["replicas"] != 3 || spec["podManagementPolicy"] != "Parallel" {
		t.Errorf("StatefulSet: replicas %v, podManagementPolicy %v: want 3 and Parallel (each pod waits for the others' quorum)",
			spec["replicas"], spec["podManagementPolicy"])
	}
	vreplicas, _ := vspec["replicas"].(int)
	if vreplicas < 1 {
		t.Fatalf("verifier StatefulSet replicas %v", vspec["replicas"])
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
	admin, verifier := container(sts), container(vsts)
	aargs, vargs := strs(admin["args"]), strs(verifier["args"])
	checkFlags(t, known, "StatefulSet keyledger-admin", aargs)
	checkFlags(t, known, "StatefulSet keyledger-verifier", vargs)

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
	for _, f := range []string{"replicas", "credentials", "fleet", "signing-key", "usage-max-age"} {
		if _, ok := flagValue(vargs, f); ok {
			t.Errorf("verifier --%s: verifiers never create or change the streams, and hold no fleet file or signing key", f)
		}
	}
	if r, _ := flagValue(vargs, "role"); r != "verifier" {
		t.Errorf("verifier --role %q", r)
	}
	// Node names are the pod names, StatefulSet name + ordinal.
	for _, c := range []struct {
		args []string
		sts  map[string]any
	}{{aargs, sts}, {vargs, vsts}} {
		if n, _ := flagValue(c.args, "node"); n != "$(POD_NAME)" {
			t.Errorf("%v: --node %q, want $(POD_NAME) (the member its nkey belongs to)", mapOf(c.sts, "metadata")["name"], n)
		}
		checkNodeName(t, "k8s", fmt.Sprint(mapOf(c.sts, "metadata")["name"])+"-0")
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

	checkK8sCredentials(t, objs, sts, vsts, admin, verifier, vreplicas)
	checkNetworkPolicies(t, objs, admin)

	// kubectl's own kustomize build, where kubectl is installed. secret.yaml
	// is not a resource: an apply must never replace real credentials with
	// its placeholders.
	var kust map[string]any
	if err := yaml.Unmarshal([]byte(readFile(t, "k8s/kustomization.yaml")), &kust); err != nil {
		t.Fatal(err)
	}
	resources := strs(kust["resources"])
	if slices.Contains(resources, "secret.yaml") {
		t.Errorf("kustomization.yaml applies secret.yaml: its placeholders would overwrite the real Secrets")
	}
	var rendered []string
	for _, r := range resources {
		rendered = append(rendered, "k8s/"+r)
	}
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, kubectl, "kustomize", "k8s").CombinedOutput()
		if want := len(k8sObjects(t, rendered...)); err != nil {
			t.Errorf("kubectl kustomize deploy/k8s: %v\n%s", err, out)
		} else if n := bytes.Count(append([]byte("\n"), out...), []byte("\nkind: ")); n != want {
			t.Errorf("kubectl kustomize rendered %d objects, the listed resources hold %d", n, want)
		}
	} else {
		t.Log("kubectl not installed: kustomization not rendered")
	}
}

// checkK8sCredentials runs secret.yaml's documented commands (creds
// generate, then kubectl create secret with --dry-run=client where kubectl
// is installed) and checks that the Secrets hold exactly each role's
// files, that the placeholders in secret.yaml have the same keys and
// values keyledger refuses, and that the pods mount them where their
// flags look.
func checkK8sCredentials(t *testing.T, objs map[string]map[string]any, sts, vsts, admin, verifier map[string]any, vreplicas int) {
	t.Helper()
	text := readFile(t, "k8s/secret.yaml")
	work := t.TempDir()
	gen := docCommand(t, text, "creds generate")
	_, fleet := runCredsGenerate(t, work, gen)
	secretKeys := map[string][]string{}
	for _, name := range []string{"keyledger-admin-creds", "keyledger-verifier-creds"} {
		words := docCommand(t, text, "create secret generic "+name)
		var keys []string
		for _, w := range words {
			if f, ok := strings.CutPrefix(w, "--from-file="); ok {
				if _, err := os.Stat(filepath.Join(work, f)); err != nil {
					t.Errorf("%s: --from-file=%s: the documented creds generate does not write it", name, f)
				}
				keys = append(keys, filepath.Base(f))
			}
		}
		sort.Strings(keys)
		secretKeys[name] = keys
		if kubectl, err := exec.LookPath("kubectl"); err == nil && words[0] == "kubectl" {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			cmd := exec.CommandContext(ctx, kubectl, append(words[1:], "--dry-run=client", "-o", "yaml")...)
			cmd.Dir = work
			out, err := cmd.Output()
			cancel()
			var s map[string]any
			if err == nil {
				err = yaml.Unmarshal(out, &s)
			}
			if got := slices.Sorted(maps.Keys(mapOf(s, "data"))); err != nil || !slices.Equal(got, keys) {
				t.Errorf("kubectl %s: %v: keys %v, want %v", strings.Join(words[1:], " "), err, got, keys)
			}
		}
	}
	var wantAdmin, wantVerifier []string
	wantAdmin = append(wantAdmin, "fleet.json", "trusted-signers")
	wantVerifier = append(wantVerifier, "trusted-signers")
	for i := range 3 {
		n := fmt.Sprintf("%s-%d", mapOf(sts, "metadata")["name"], i)
		wantAdmin = append(wantAdmin, n+".nk", n+".signing-key")
		if r := fleet.roles(n); !slices.Contains(r, "admin") || !slices.Contains(r, "analytics") {
			t.Errorf("fleet member %s: roles %v, want admin and analytics", n, r)
		}
	}
	for i := range vreplicas {
		n := fmt.Sprintf("%s-%d", mapOf(vsts, "metadata")["name"], i)
		wantVerifier = append(wantVerifier, n+".nk")
		if r := fleet.roles(n); !slices.Equal(r, []string{"verifier"}) {
			t.Errorf("fleet member %s: roles %v, want verifier (one member per verifier replica)", n, r)
		}
	}
	sort.Strings(wantAdmin)
	sort.Strings(wantVerifier)
	want := map[string][]string{"keyledger-admin-creds": wantAdmin, "keyledger-verifier-creds": wantVerifier}
	for name, keys := range want {
		if !slices.Equal(secretKeys[name], keys) {
			t.Errorf("documented Secret %s holds %v, want exactly %v", name, secretKeys[name], keys)
		}
		ph := objs["Secret/"+name]
		if ph == nil {
			t.Errorf("secret.yaml has no placeholder Secret %s", name)
			continue
		}
		data := mapOf(ph, "stringData")
		if got := slices.Sorted(maps.Keys(data)); !slices.Equal(got, keys) {
			t.Errorf("placeholder Secret %s keys %v, want %v", name, got, keys)
		}
		for k, v := range data {
			if placeholderAccepted(t, k, fmt.Sprint(v)) {
				t.Errorf("placeholder %s/%s is accepted by keyledger: it must not be usable", name, k)
			}
		}
	}
	if fleet.Routes == nil {
		t.Errorf("the documented creds generate has no --routes: the admin pods form a cluster")
	}

	// The pods mount their role's Secret, read-only, group-readable by
	// their fsGroup (the files are not readable by uid 65532 otherwise),
	// where their flags look.
	mountOf := func(o, c map[string]any) (string, string) {
		pod := mapOf(o, "spec", "template", "spec")
		if g := mapOf(pod, "securityContext")["fsGroup"]; g != 65532 {
			t.Errorf("%v: fsGroup %v, want 65532 (the secret files' group)", mapOf(o, "metadata")["name"], g)
		}
		vols := map[string]map[string]any{}
		for _, v := range pod["volumes"].([]any) {
			m := v.(map[string]any)
			vols[fmt.Sprint(m["name"])] = m
		}
		for _, vm := range c["volumeMounts"].([]any) {
			m := vm.(map[string]any)
			sec := mapOf(vols[fmt.Sprint(m["name"])], "secret")
			if sec == nil {
				continue
			}
			if m["readOnly"] != true || (sec["defaultMode"] != 0o440 && sec["defaultMode"] != 0o400) {
				t.Errorf("%v: secret %v mounted readOnly %v, defaultMode %v: want read-only, 0440 or 0400", mapOf(o, "metadata")["name"], sec["secretName"], m["readOnly"], sec["defaultMode"])
			}
			return fmt.Sprint(sec["secretName"]), fmt.Sprint(m["mountPath"])
		}
		return "", ""
	}
	aargs, vargs := strs(admin["args"]), strs(verifier["args"])
	if s, p := mountOf(sts, admin); s != "keyledger-admin-creds" || !slices.Contains(aargs, "--credentials="+p) {
		t.Errorf("admin pods mount secret %q at %q, args %v: want keyledger-admin-creds at their --credentials", s, p, aargs)
	}
	s, p := mountOf(vsts, verifier)
	nk, _ := flagValue(vargs, "nats-nkey")
	ts, _ := flagValue(vargs, "trusted-signers")
	if s != "keyledger-verifier-creds" || nk != p+"/$(POD_NAME).nk" || ts != p+"/trusted-signers" {
		t.Errorf("verifier pods mount secret %q at %q with --nats-nkey %q --trusted-signers %q: want keyledger-verifier-creds, their own nkey and the keyring", s, p, nk, ts)
	}
}

// placeholderAccepted reports whether keyledger's own parsers accept a
// placeholder value as the credential file it stands for.
func placeholderAccepted(t *testing.T, key, value string) bool {
	t.Helper()
	switch {
	case key == "fleet.json":
		f := filepath.Join(t.TempDir(), key)
		if err := os.WriteFile(f, []byte(value), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := klnats.LoadFleet(f)
		return err == nil
	case key == "trusted-signers":
		_, err := events.ParseKeyring([]byte(value))
		return err == nil
	case strings.HasSuffix(key, ".nk"):
		_, err := klnats.ParseIdentity([]byte(value), strings.TrimSuffix(key, ".nk"))
		return err == nil
	case strings.HasSuffix(key, ".signing-key"):
		_, err := events.NewSigner(value)
		return err == nil
	}
	t.Errorf("placeholder for unknown credential file %s", key)
	return true
}

// checkNetworkPolicies evaluates the NetworkPolicies for the connections
// that matter: a verifier reaches the admin pods' NATS client port and
// nothing else of theirs; routes only between admin pods.
func checkNetworkPolicies(t *testing.T, objs map[string]map[string]any, admin map[string]any) {
	t.Helper()
	var pols []map[string]any
	for k, o := range objs {
		if strings.HasPrefix(k, "NetworkPolicy/") {
			pols = append(pols, o)
		}
	}
	ports := map[string]int{}
	for _, p := range admin["ports"].([]any) {
		m := p.(map[string]any)
		ports[fmt.Sprint(m["name"])] = m["containerPort"].(int)
	}
	if ports["nats"] != 4222 || ports["cluster"] != 6222 || ports["http"] != 8080 {
		t.Fatalf("admin container ports %v: the policies are written for nats 4222, cluster 6222, http 8080", ports)
	}
	l := func(component string) map[string]string {
		return map[string]string{"app.kubernetes.io/name": "keyledger", "app.kubernetes.io/component": component}
	}
	adminPod := k8sPod{"keyledger", l("admin")}
	verifierPod := k8sPod{"keyledger", l("verifier")}
	gateway := k8sPod{"keyledger", map[string]string{"app.kubernetes.io/name": "nginx"}}
	ingress := k8sPod{"ingress-nginx", map[string]string{"app.kubernetes.io/name": "ingress-nginx"}}
	dns := k8sPod{"kube-system", map[string]string{"k8s-app": "kube-dns"}}
	clickhouse := k8sPod{"keyledger", map[string]string{"app": "clickhouse"}}
	for _, c := range []struct {
		what     string
		src, dst k8sPod
		port     int
		proto    string
		want     bool
	}{
		{"verifier → admin NATS clients", verifierPod, adminPod, 4222, "TCP", true},
		{"verifier → admin HTTP (admin API)", verifierPod, adminPod, 8080, "TCP", false},
		{"verifier → admin routes", verifierPod, adminPod, 6222, "TCP", false},
		{"verifier → admin monitoring", verifierPod, adminPod, 8222, "TCP", false},
		{"verifier → cluster DNS", verifierPod, dns, 53, "UDP", true},
		{"verifier → another pod", verifierPod, clickhouse, 9000, "TCP", false},
		{"admin → admin routes", adminPod, adminPod, 6222, "TCP", true},
		{"admin → admin NATS clients", adminPod, adminPod, 4222, "TCP", true},
		{"gateway → admin HTTP", gateway, adminPod, 8080, "TCP", true},
		{"ingress controller → admin HTTP", ingress, adminPod, 8080, "TCP", true},
		{"gateway → admin NATS clients", gateway, adminPod, 4222, "TCP", false},
		{"gateway → admin routes", gateway, adminPod, 6222, "TCP", false},
		{"ingress controller → admin routes", ingress, adminPod, 6222, "TCP", false},
		{"gateway → verifier HTTP", gateway, verifierPod, 8080, "TCP", true},
	} {
		if got := policyAllows(pols, c.src, c.dst, c.port, c.proto); got != c.want {
			t.Errorf("NetworkPolicy: %s (port %d): allowed %v, want %v", c.what, c.port, got, c.want)
		}
		// What a verifier may not reach, each side refuses on its own:
		// the admin pods' ingress and the verifiers' egress.
		if !c.want && c.src.labels["app.kubernetes.io/component"] == "verifier" && c.dst.labels["app.kubernetes.io/component"] == "admin" {
			for _, kind := range []string{"Ingress", "Egress"} {
				var only []map[string]any
				for _, np := range pols {
					if slices.Contains(strs(mapOf(np, "spec")["policyTypes"]), kind) {
						only = append(only, np)
					}
				}
				if policyAllows(only, c.src, c.dst, c.port, c.proto) {
					t.Errorf("NetworkPolicy: %s (port %d): the %s policies alone allow it", c.what, c.port, kind)
				}
			}
		}
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
	// The credentials as keyledger-admin.service documents generating them
	// (one fleet for the nodes and, with deploy/nats, the NATS servers).
	adminText := readFile(t, "systemd/keyledger-admin.service")
	gen := docCommand(t, adminText, "creds generate")
	if other := docCommand(t, readFile(t, "systemd/nats-server.service"), "creds generate"); !slices.Equal(gen, other) {
		t.Errorf("keyledger-admin.service and nats-server.service document different fleets:\n%q\n%q", gen, other)
	}
	work := t.TempDir()
	_, fleet := runCredsGenerate(t, work, gen)
	credSources := map[string]string{} // unit → directory its credentials come from
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
		if len(u.keys["StateDirectory"]) == 0 {
			t.Errorf("%s: want a StateDirectory", path)
		}
		// What LoadCredential= loads, by ID; ExecStart uses only those.
		creds := map[string]string{}
		for _, lc := range u.keys["LoadCredential"] {
			id, src, ok := strings.Cut(lc, ":")
			if !ok || !filepath.IsAbs(src) {
				t.Errorf("%s: LoadCredential=%s: want ID:/absolute/path", path, lc)
			}
			creds[id] = src
			credSources[path] = filepath.Dir(src)
		}
		cmd := strings.Join(u.exec, " ")
		for _, m := range regexp.MustCompile(`\$\{CREDENTIALS_DIRECTORY\}/([\w.-]+)`).FindAllStringSubmatch(cmd, -1) {
			if creds[m[1]] == "" {
				t.Errorf("%s: ExecStart reads credential %s, which no LoadCredential= loads", path, m[1])
			}
		}
		if strings.HasSuffix(u.exec[0], "/nats-server") {
			if !strings.Contains(cmd, "-c ${CREDENTIALS_DIRECTORY}/nats-server.conf") {
				t.Errorf("%s: ExecStart %q: want -c ${CREDENTIALS_DIRECTORY}/nats-server.conf", path, cmd)
			}
			// Every file the config includes is next to it.
			want := append(natsIncludes(t, natsNodes[0]), "nats-server.conf")
			if got := slices.Sorted(maps.Keys(creds)); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
				t.Errorf("%s loads %v: want nats-server.conf and what it includes, %v", path, got, want)
			}
			if len(u.keys["ExecReload"]) > 0 {
				t.Errorf("%s: ExecReload would re-read the copies systemd made at start, not the changed files", path)
			}
			continue
		}
		if len(u.keys["EnvironmentFile"]) == 0 {
			t.Errorf("%s: want an EnvironmentFile", path)
		}
		checkFlags(t, known, path, u.exec[1:])
		// Every variable the command line uses is set by the env files
		// (or by systemd: the credentials directory).
		vars := map[string]string{}
		for _, e := range envs {
			for k, v := range envValues(t, e) {
				vars[k] = v
			}
		}
		if vars["KEYLEDGER_CREDENTIALS"] != "" {
			t.Errorf("%s: KEYLEDGER_CREDENTIALS would point the node at a whole credentials directory", path)
		}
		for _, m := range reVar.FindAllStringSubmatch(cmd, -1) {
			if _, ok := vars[m[1]]; !ok && !(m[1] == "CREDENTIALS_DIRECTORY" && len(creds) > 0) {
				t.Errorf("%s: ExecStart uses ${%s}, which %v do not set", path, m[1], envs)
			}
		}
		node := vars["KEYLEDGER_NODE"]
		checkNodeName(t, path, node)
		// Each role's credentials, and only those.
		args := u.exec[1:]
		var want map[string]string // flag → credential ID
		var member []string        // roles the fleet must give KEYLEDGER_NODE
		switch role, _ := flagValue(args, "role"); role {
		case "admin":
			want = map[string]string{"fleet": "", "nats-nkey": "", "signing-key": "", "trusted-signers": ""}
			member = []string{"admin"}
		case "verifier":
			want = map[string]string{"nats-nkey": "", "trusted-signers": ""}
			member = []string{"verifier"}
			for _, f := range []string{"credentials", "fleet", "signing-key", "replicas", "usage-max-age"} {
				if _, ok := flagValue(args, f); ok {
					t.Errorf("%s: a verifier takes no --%s", path, f)
				}
			}
		default:
			t.Errorf("%s: --role %q", path, role)
		}
		for f := range want {
			v, _ := flagValue(args, f)
			id, ok := strings.CutPrefix(v, "${CREDENTIALS_DIRECTORY}/")
			if !ok {
				t.Errorf("%s: --%s %q: want a file of ${CREDENTIALS_DIRECTORY}", path, f, v)
			}
			want[f] = id
		}
		if got, w := slices.Sorted(maps.Keys(creds)), slices.Sorted(maps.Values(want)); !slices.Equal(got, w) {
			t.Errorf("%s loads credentials %v: want exactly %v", path, got, w)
		}
		for _, r := range member {
			if !slices.Contains(fleet.roles(node), r) {
				t.Errorf("%s: KEYLEDGER_NODE %s has roles %v in the documented fleet, want %s", path, node, fleet.roles(node), r)
			}
		}
		// Each credential is installed, from the documented generation,
		// and the nkey and signing key are KEYLEDGER_NODE's own.
		installed := installLines(readFile(t, path))
		for id, dst := range creds {
			src, ok := installed[dst]
			if !ok {
				t.Errorf("%s: no install line puts a file at %s (credential %s)", path, dst, id)
				continue
			}
			if _, err := os.Stat(filepath.Join(work, src)); err != nil {
				t.Errorf("%s: installs %s, which the documented creds generate does not write", path, src)
			}
			for flag, ext := range map[string]string{"nats-nkey": ".nk", "signing-key": ".signing-key"} {
				if want[flag] == id && filepath.Base(src) != node+ext {
					t.Errorf("%s: installs %s as its --%s, but KEYLEDGER_NODE is %s", path, src, flag, node)
				}
			}
		}
		if path == "systemd/keyledger-admin.service" && !envFile(t, "systemd/secrets.env.example")["KEYLEDGER_ADMIN_TOKEN"] {
			t.Errorf("secrets.env.example does not hold KEYLEDGER_ADMIN_TOKEN")
		}
	}
	if a, v := credSources["systemd/keyledger-admin.service"], credSources["systemd/keyledger-verifier.service"]; a == "" || a == v {
		t.Errorf("admin and verifier credentials in %q and %q: want a directory per role", a, v)
	}

	// systemd's own checker, where installed: unknown keys, bad values.
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: units not verified by systemd")
		return
	}
	dir := t.TempDir()
	bin := buildtest.Keyledger(t)
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

var reVar = regexp.MustCompile(`\$\{(\w+)\}`)

// natsIncludes returns the names of the files a NATS config includes,
// transitively through the ones in deploy/nats/.
func natsIncludes(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^\s*include\s+(\S+)`).FindAllStringSubmatch(readFile(t, path), -1) {
		name := filepath.Base(m[1])
		out = append(out, name)
		if next := filepath.Join(filepath.Dir(path), name); fileExists(next) {
			out = append(out, natsIncludes(t, next)...)
		}
	}
	return out
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
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
		"KEYLEDGER_BIN="+buildtest.Keyledger(t),
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
	// Credentials: generated on the first start; every node runs with
	// them, and the embedded servers let no anonymous client in.
	credsDir := filepath.Join(dir, "credentials")
	if !strings.Contains(out, credsDir) {
		t.Errorf("start does not say where the credentials are:\n%s", out)
	}
	var fleet fleetFile
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(credsDir, "fleet.json"))), &fleet); err != nil {
		t.Fatal(err)
	}
	for i, p := range pids {
		n := fmt.Sprintf("n%d", i+1)
		if r := fleet.roles(n); !slices.Contains(r, "admin") || !slices.Contains(r, "analytics") {
			t.Errorf("fleet member %s: roles %v", n, r)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if err != nil {
			t.Fatal(err)
		}
		if c, _ := flagValue(strings.Split(string(b), "\x00"), "credentials"); c != credsDir {
			t.Errorf("%s runs with --credentials %q, want %s", n, c, credsDir)
		}
	}
	if !slices.Equal(fleet.roles("v1"), []string{"verifier"}) || !slices.Equal(fleet.roles("operator"), []string{"operator"}) || fleet.Routes == nil {
		t.Errorf("fleet: want verifier v1, the operator and route credentials: %+v", fleet)
	}
	var natsURLs []string
	for i := range 3 {
		natsURLs = append(natsURLs, fmt.Sprintf("nats://127.0.0.1:%d", bases[1]+i))
	}
	if nc, err := nats.Connect(natsURLs[0], nats.Timeout(2*time.Second)); err == nil {
		nc.Close()
		t.Errorf("n1's NATS let a client without credentials in")
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

	// A verifier follows the cluster with only its nkey and the keyring,
	// as the script's header shows: it applies the ledger (the revoke
	// included), and its nkey buys no more than the verifier role.
	var key2 struct {
		Key string `json:"key"`
	}
	if code := call(t, ctx, "POST", node(1)+"/v1/keys", token, `{"name":"y","environment":"live"}`, &key2); code != http.StatusCreated {
		t.Fatalf("second create on n1: %d", code)
	}
	vcreds := t.TempDir()
	for _, f := range []string{"v1.nk", "trusted-signers"} {
		if err := os.WriteFile(filepath.Join(vcreds, f), []byte(readFile(t, filepath.Join(credsDir, f))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The command of the script's header, its defaults moved to this
	// run: the credentials directory to one holding only v1's two files.
	vcmd := docCommand(t, script, "serve --role verifier")
	checkFlags(t, known, "local-cluster.sh header", vcmd[1:])
	vaddr := fmt.Sprintf("127.0.0.1:%d", buildtest.FreePorts(t, 1)[0])
	moved := strings.NewReplacer(".cache/local-cluster/credentials", vcreds, ".cache/local-cluster/v1", filepath.Join(t.TempDir(), "v1"),
		"127.0.0.1:18091", vaddr, "nats://127.0.0.1:14231,nats://127.0.0.1:14232,nats://127.0.0.1:14233", strings.Join(natsURLs, ","))
	var vargs []string
	for _, w := range vcmd[1:] {
		vargs = append(vargs, moved.Replace(w))
	}
	if strings.Contains(strings.Join(vargs, " "), ".cache") || strings.Contains(strings.Join(vargs, " "), ":1423") {
		t.Fatalf("the header's verifier command %q uses paths or ports this test does not move", vcmd)
	}
	for _, f := range []string{"credentials", "fleet", "signing-key"} {
		if _, ok := flagValue(vargs, f); ok {
			t.Errorf("the header's verifier command passes --%s: a verifier needs only its nkey and the keyring", f)
		}
	}
	v1 := startServe(t, "verifier v1", "http://"+vaddr, cleanEnv(), vargs)
	v1.waitReady(t, 30*time.Second)
	if code := call(t, ctx, "GET", v1.url+"/v1/authz", key2.Key, "", nil); code != http.StatusOK {
		t.Errorf("verifier v1: a live key answers %d, want 200\n%s", code, v1.out.String())
	}
	if code := call(t, ctx, "GET", v1.url+"/v1/authz", created.Key, "", nil); code != http.StatusUnauthorized {
		t.Errorf("verifier v1: the revoked key answers %d, want 401", code)
	}
	vnc, verrs := natsAs(t, strings.Join(natsURLs, ","), "v1", filepath.Join(vcreds, "v1.nk"))
	for _, s := range []string{"keyledger.keys." + created.ID, "$JS.API.STREAM.DELETE.KEYS", "$JS.API.STREAM.UPDATE.KEYS", "keyledger.usage.live.batch.n1"} {
		expectDenied(t, "v1", vnc, verrs, s)
	}
	vnc.Close()
	v1.stop(t)

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
