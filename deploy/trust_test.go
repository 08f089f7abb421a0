// Helpers for the credentials the deploy files use: running the
// generation commands they document, reading what those commands write,
// NATS subject permissions, keyledger processes started from a deploy
// file's command line, and Kubernetes NetworkPolicy evaluation.
package deploy_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyledger/keyledger/internal/buildtest"
	"github.com/keyledger/keyledger/node/nodetest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// fleetFile is fleet.json as `keyledger creds generate` writes it.
type fleetFile struct {
	Members []struct {
		Name  string   `json:"name"`
		Roles []string `json:"roles"`
		NKey  string   `json:"nkey"`
	} `json:"members"`
	Routes *struct {
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"routes"`
}

// roles returns the roles of member name, nil if it is not in the fleet.
func (f fleetFile) roles(name string) []string {
	for _, m := range f.Members {
		if m.Name == name {
			return m.Roles
		}
	}
	return nil
}

func (f fleetFile) nkey(name string) string {
	for _, m := range f.Members {
		if m.Name == name {
			return m.NKey
		}
	}
	return ""
}

// docCommand returns the command a deploy file documents in a comment: the
// first comment line containing marker, with its continuation lines (a
// trailing backslash), without a trailing "  # remark", split into words.
// The commands we document need no shell quoting.
func docCommand(t *testing.T, text, marker string) []string {
	t.Helper()
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		c, ok := strings.CutPrefix(strings.TrimSpace(lines[i]), "#")
		if !ok || !strings.Contains(c, marker) {
			continue
		}
		var b strings.Builder
		for {
			c = strings.TrimSpace(c)
			more := strings.HasSuffix(c, "\\")
			b.WriteString(strings.TrimSuffix(c, "\\") + " ")
			if !more || i+1 >= len(lines) {
				break
			}
			i++
			c, _ = strings.CutPrefix(strings.TrimSpace(lines[i]), "#")
		}
		s := b.String()
		if j := strings.Index(s, " # "); j >= 0 {
			s = s[:j]
		}
		return strings.Fields(s)
	}
	t.Fatalf("no documented command containing %q", marker)
	return nil
}

// runCredsGenerate runs a documented `keyledger creds generate` command in
// cwd with the built binary, and returns the directory it wrote and the
// fleet file in it.
func runCredsGenerate(t *testing.T, cwd string, words []string) (string, fleetFile) {
	t.Helper()
	if len(words) < 4 || filepath.Base(words[0]) != "keyledger" || words[1] != "creds" || words[2] != "generate" {
		t.Fatalf("not a keyledger creds generate command: %q", words)
	}
	dir, ok := flagValue(words, "dir")
	if !ok {
		t.Fatalf("%q: no --dir", words)
	}
	cmd := exec.Command(buildtest.Keyledger(t), words[1:]...)
	cmd.Dir = cwd
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(words, " "), err, out)
	}
	dir = filepath.Join(cwd, dir)
	var f fleetFile
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(dir, "fleet.json"))), &f); err != nil {
		t.Fatalf("fleet.json: %v", err)
	}
	return dir, f
}

// routeURLs runs deploy/nats/route-urls.sh as documented (words), in cwd.
func routeURLs(t *testing.T, cwd string, words []string) {
	t.Helper()
	if len(words) < 3 || !strings.HasSuffix(words[0], "nats/route-urls.sh") {
		t.Fatalf("not a route-urls.sh command: %q", words)
	}
	script, err := filepath.Abs("nats/route-urls.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", append([]string{script}, words[1:]...)...)
	cmd.Dir = cwd
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(words, " "), err, out)
	}
}

// ------------------------------------------------------ NATS permissions

// subjectMatches reports whether a NATS subject matches a permission
// pattern (tokens, '*' one token, '>' one or more at the end).
func subjectMatches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || (tok != "*" && tok != s[i]) {
			return false
		}
	}
	return len(p) == len(s)
}

// mayPublish is nats-server's rule: allowed when the allow list is empty
// or matches, and no deny matches.
func mayPublish(p *server.Permissions, subject string) bool {
	if p == nil || p.Publish == nil {
		return true
	}
	ok := len(p.Publish.Allow) == 0
	for _, a := range p.Publish.Allow {
		ok = ok || subjectMatches(a, subject)
	}
	for _, d := range p.Publish.Deny {
		if subjectMatches(d, subject) {
			return false
		}
	}
	return ok
}

// natsAs connects to urls as member, with the nkey seed in seedFile and the
// member's own inbox prefix (the only one its permissions let it
// subscribe to). Asynchronous errors (permission violations) arrive on the
// channel.
func natsAs(t *testing.T, urls, member, seedFile string) (*nats.Conn, <-chan error) {
	t.Helper()
	errs := make(chan error, 64)
	opt, err := nats.NkeyOptionFromSeed(seedFile)
	if err != nil {
		t.Fatalf("%s: %v", seedFile, err)
	}
	nc, err := nats.Connect(urls, opt, nats.CustomInboxPrefix("_INBOX_"+member), nats.Timeout(5*time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", member, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// expectDenied publishes to subject and waits (bounded) for the server's
// permissions violation naming it.
func expectDenied(t *testing.T, who string, nc *nats.Conn, errs <-chan error, subject string) {
	t.Helper()
	if err := nc.Publish(subject, []byte("{}")); err != nil {
		t.Fatalf("%s: publish %s: %v", who, subject, err)
	}
	// The server answers a refused publish with -ERR before the PONG of
	// this flush, so the violation is on its way when Flush returns.
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("%s: flush: %v", who, err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case err := <-errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
				return
			}
		case <-deadline:
			t.Errorf("%s may publish %s: the server reported no permissions violation", who, subject)
			return
		}
	}
}

// ------------------------------------------------- keyledger processes

// proc is a keyledger serve started by a test.
type proc struct {
	name string
	url  string // its HTTP base URL
	cmd  *exec.Cmd
	out  *nodetest.SyncBuffer
	done chan struct{}
}

// startServe runs the binary with args and env (the whole environment),
// stopped at the end of the test. url is its --http.
func startServe(t *testing.T, name, url string, env, args []string) *proc {
	t.Helper()
	p := &proc{name: name, url: url, out: &nodetest.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(buildtest.Keyledger(t), args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and waits (bounded), then kills.
func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop within 30s of SIGTERM", p.name)
	}
}

// waitReady polls /readyz until 200, failing the test if the process
// exits first or the deadline passes.
func (p *proc) waitReady(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-p.done:
			t.Fatalf("%s exited: %v\n%s", p.name, p.cmd.ProcessState, p.out.String())
		default:
		}
		if resp, err := client.Get(p.url + "/readyz"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within %v:\n%s", p.name, d, p.out.String())
		}
		select {
		case <-p.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cleanEnv is this process's environment without any KEYLEDGER_ variable,
// plus extra.
func cleanEnv(extra ...string) []string {
	var out []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "KEYLEDGER_") {
			out = append(out, e)
		}
	}
	return append(out, extra...)
}

// --------------------------------------------------------- systemd units

// installLines returns, for each path a unit's install comments install a
// file to, the file they install there ("install -m MODE SRC... DEST").
func installLines(text string) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "#"))
		if len(f) < 4 || f[0] != "install" || slices.Contains(f, "-d") {
			continue
		}
		var files []string
		for i := 1; i < len(f); i++ {
			if f[i] == "-m" || f[i] == "-o" || f[i] == "-g" {
				i++
				continue
			}
			if f[i] == "#" {
				break
			}
			files = append(files, f[i])
		}
		if len(files) < 2 {
			continue
		}
		dest, srcs := files[len(files)-1], files[:len(files)-1]
		if len(srcs) == 1 && !strings.HasSuffix(dest, "/") {
			out[dest] = srcs[0]
			continue
		}
		for _, s := range srcs {
			out[filepath.Join(dest, filepath.Base(s))] = s
		}
	}
	return out
}

// loadCredentials builds the directory systemd would hand a unit for its
// LoadCredential=ID:PATH lines: each PATH must be installed by one of the
// unit's install comments, whose source resolve maps to a file here.
func loadCredentials(t *testing.T, path string, u unit, resolve func(src string) string) string {
	t.Helper()
	installed := installLines(readFile(t, path))
	dir := t.TempDir()
	for _, lc := range u.keys["LoadCredential"] {
		id, src, ok := strings.Cut(lc, ":")
		if !ok {
			t.Fatalf("%s: LoadCredential=%s is not ID:PATH", path, lc)
		}
		from, ok := installed[src]
		if !ok {
			t.Errorf("%s: LoadCredential %s reads %s, which no install line of the unit's comments installs", path, id, src)
			continue
		}
		b, err := os.ReadFile(resolve(from))
		if err != nil {
			t.Errorf("%s: %s installed as %s: %v", path, from, src, err)
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, id), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// execStart expands a unit's ExecStart as systemd would: ${VAR} from vars
// (a whole word, so an empty value is one empty argument), the binary
// path replaced by bin.
func execStart(t *testing.T, path string, u unit, bin string, vars map[string]string) []string {
	t.Helper()
	var out []string
	for i, w := range u.exec {
		if i == 0 {
			out = append(out, bin)
			continue
		}
		var missing []string
		w = reVar.ReplaceAllStringFunc(w, func(m string) string {
			name := reVar.FindStringSubmatch(m)[1]
			v, ok := vars[name]
			if !ok {
				missing = append(missing, name)
			}
			return v
		})
		if len(missing) > 0 {
			t.Fatalf("%s: ExecStart uses %v, not set", path, missing)
		}
		out = append(out, w)
	}
	return out
}

// envValues reads an env file's assignments.
func envValues(t *testing.T, path string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(readFile(t, path), "\n") {
		line = strings.TrimSpace(line)
		if k, v, ok := strings.Cut(line, "="); ok && line[0] != '#' {
			out[k] = v
		}
	}
	return out
}

// ------------------------------------------------------- NetworkPolicy

// k8sPod is a pod for policy evaluation.
type k8sPod struct {
	ns     string
	labels map[string]string
}

// selects evaluates a label selector (matchLabels, matchExpressions); an
// empty selector selects everything.
func selects(sel map[string]any, labels map[string]string) bool {
	for k, v := range mapOf(sel, "matchLabels") {
		if labels[k] != fmt.Sprint(v) {
			return false
		}
	}
	exprs, _ := sel["matchExpressions"].([]any)
	for _, e := range exprs {
		m := e.(map[string]any)
		key, op, values := fmt.Sprint(m["key"]), fmt.Sprint(m["operator"]), strs(m["values"])
		v, has := labels[key]
		switch op {
		case "In":
			if !has || !slices.Contains(values, v) {
				return false
			}
		case "NotIn":
			if has && slices.Contains(values, v) {
				return false
			}
		case "Exists":
			if !has {
				return false
			}
		case "DoesNotExist":
			if has {
				return false
			}
		default:
			panic("selector operator " + op)
		}
	}
	return true
}

// peerMatches: a NetworkPolicy peer (podSelector, namespaceSelector or
// both; ipBlock never matches a pod here) against pod p, for a policy in
// namespace ns.
func peerMatches(peer map[string]any, ns string, p k8sPod) bool {
	if peer["ipBlock"] != nil {
		return false
	}
	nsSel, hasNS := peer["namespaceSelector"].(map[string]any)
	podSel, hasPod := peer["podSelector"].(map[string]any)
	if peer["namespaceSelector"] != nil && nsSel == nil {
		nsSel, hasNS = map[string]any{}, true // namespaceSelector: {} decodes as an empty map
	}
	if peer["podSelector"] != nil && podSel == nil {
		podSel, hasPod = map[string]any{}, true
	}
	if hasNS {
		if !selects(nsSel, map[string]string{"kubernetes.io/metadata.name": p.ns}) {
			return false
		}
	} else if p.ns != ns {
		return false
	}
	return !hasPod || selects(podSel, p.labels)
}

func portsMatch(ports []any, port int, proto string) bool {
	if len(ports) == 0 {
		return true
	}
	for _, x := range ports {
		m := x.(map[string]any)
		pr := fmt.Sprint(m["protocol"])
		if m["protocol"] == nil {
			pr = "TCP"
		}
		if m["port"] == port && pr == proto {
			return true
		}
	}
	return false
}

// policyAllows reports whether the NetworkPolicies allow a connection from
// src to dst:port/proto: dst's ingress and src's egress, each allowed when
// no policy isolates the pod in that direction or a rule allows it.
func policyAllows(policies []map[string]any, src, dst k8sPod, port int, proto string) bool {
	direction := func(kind, peersKey string, self, other k8sPod) bool {
		isolated, allowed := false, false
		for _, np := range policies {
			ns := fmt.Sprint(mapOf(np, "metadata")["namespace"])
			if ns == "<nil>" {
				ns = "keyledger"
			}
			spec := mapOf(np, "spec")
			if ns != self.ns || !selects(mapOf(spec, "podSelector"), self.labels) {
				continue
			}
			types := strs(spec["policyTypes"])
			if !slices.Contains(types, kind) {
				continue
			}
			isolated = true
			rules, _ := spec[strings.ToLower(kind)].([]any)
			for _, r := range rules {
				rm := r.(map[string]any)
				peers, _ := rm[peersKey].([]any)
				match := len(peers) == 0
				for _, pe := range peers {
					match = match || peerMatches(pe.(map[string]any), ns, other)
				}
				ports, _ := rm["ports"].([]any)
				if match && portsMatch(ports, port, proto) {
					allowed = true
				}
			}
		}
		return !isolated || allowed
	}
	return direction("Ingress", "from", dst, src) && direction("Egress", "to", src, dst)
}
