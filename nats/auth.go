package nats

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Who may do what on the bus is decided by the NATS server itself, from
// per-user permissions, not by convention among clients. Every node, tool
// and the break-glass operator is a Member of the fleet with roles; each
// authenticates with an nkey (an Ed25519 key pair): the server holds only
// public keys, a client proves it holds the seed by signing the server's
// nonce, so no password crosses the wire and a leaked server config grants
// nothing. nkeys are what nats-server and nats.go support natively without
// the operator/JWT machinery, and the nats CLI takes them (--nkey FILE).

// Role is what a fleet member may do on the bus.
type Role string

// The roles.
const (
	// RoleAdmin writes the ledger (keyledger.keys.*), creates the streams
	// (never updates or deletes KEYS) and follows the fleet's heartbeats;
	// it also verifies.
	RoleAdmin Role = "admin"
	// RoleVerifier reads KEYS through its own consumers and publishes only
	// its own usage batches and heartbeats.
	RoleVerifier Role = "verifier"
	// RoleAnalytics owns the analytics durable consumers on KEYS and
	// USAGE and publishes alerts and dead letters.
	RoleAnalytics Role = "analytics"
	// RoleOperator is break-glass: everything, including deleting KEYS or
	// changing its limits. No node runs with it.
	RoleOperator Role = "operator"
)

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleAdmin, RoleVerifier, RoleAnalytics, RoleOperator:
		return r, nil
	}
	return "", keyledger.Errorf(keyledger.Invalid, "unknown role %q (want admin, verifier, analytics or operator)", s)
}

// Analytics durable consumer names: the permissions name them, so that no
// other role can create, take over or delete them.
const (
	AnalyticsKeysDurable  = "analytics-keys"
	AnalyticsUsageDurable = "analytics-usage"
	// AnalyticsAlertsDurable delivers ALERTS' notices to the webhook.
	AnalyticsAlertsDurable = "analytics-alerts"
)

// analyticsDurables are the durable consumers only the analytics role may
// create or use.
var analyticsDurables = [][2]string{{KeysStream, AnalyticsKeysDurable}, {UsageStream, AnalyticsUsageDurable}, {AlertsStream, AnalyticsAlertsDurable}}

// AlertSubjectPrefix and DeadLetterSubjectPrefix are analytics' subjects.
const (
	AlertSubjectPrefix      = "keyledger.alerts."
	DeadLetterSubjectPrefix = "keyledger.deadletter."
)

// Member is one identity of the fleet: a node, a tool or the operator.
type Member struct {
	Name  string `json:"name"`
	Roles []Role `json:"roles"`
	// NKey is the member's public user nkey ("U…").
	NKey string `json:"nkey"`
}

// Has reports whether m has role r.
func (m Member) Has(r Role) bool {
	for _, x := range m.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// RouteAuth is what cluster members present to each other on routes.
type RouteAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// Fleet is the fleet file: every member's public key and roles, and the
// route credentials of an embedded cluster. It holds the route password,
// so it is written with mode 0600 and given only to nodes that run an
// embedded server or verify heartbeats (admin nodes).
type Fleet struct {
	Members []Member   `json:"members"`
	Routes  *RouteAuth `json:"routes,omitempty"`
}

// Member returns the member named name.
func (f *Fleet) Member(name string) (Member, bool) {
	for _, m := range f.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// ValidName checks a member name: it becomes a subject token and an inbox
// prefix, so it follows the rule of key ids (events.ValidKeyID).
func ValidName(name string) error {
	if events.ValidKeyID(name) != nil {
		return keyledger.Errorf(keyledger.Invalid, "member name %s must be 1 to 64 letters, digits, '-' and '_'", keyledger.Quote(name))
	}
	return nil
}

// Validate checks the fleet file.
func (f *Fleet) Validate() error {
	if len(f.Members) == 0 {
		return keyledger.Errorf(keyledger.Invalid, "fleet: no members")
	}
	seen := map[string]bool{}
	for _, m := range f.Members {
		if err := ValidName(m.Name); err != nil {
			return err
		}
		if seen[m.Name] {
			return keyledger.Errorf(keyledger.Invalid, "fleet: member %q listed twice", m.Name)
		}
		seen[m.Name] = true
		if len(m.Roles) == 0 {
			return keyledger.Errorf(keyledger.Invalid, "fleet: member %q has no role", m.Name)
		}
		for _, r := range m.Roles {
			if _, err := ParseRole(string(r)); err != nil {
				return keyledger.Errorf(keyledger.Invalid, "fleet: member %q: %s", m.Name, keyledger.ErrorMessage(err))
			}
		}
		if !nkeys.IsValidPublicUserKey(m.NKey) {
			return keyledger.Errorf(keyledger.Invalid, "fleet: member %q: nkey must be a public user nkey (U…)", m.Name)
		}
	}
	if f.Routes != nil && (f.Routes.Username == "" || len(f.Routes.Password) < 16) {
		return keyledger.Errorf(keyledger.Invalid, "fleet: routes need a username and a password of at least 16 characters")
	}
	return nil
}

// LoadFleet reads and validates a fleet file.
func LoadFleet(path string) (*Fleet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "cannot read fleet file: %v", err)
	}
	var f Fleet
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "fleet file %s is not valid JSON", path)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// Write writes the fleet file with mode 0600.
func (f *Fleet) Write(path string) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return writeSecret(path, append(b, '\n'))
}

func writeSecret(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "cannot write "+path)
	}
	if err := os.Rename(tmp, path); err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "cannot write "+path)
	}
	return nil
}

// InboxPrefix is a member's own inbox prefix: replies to its requests go
// there, and no other member may subscribe to it.
func InboxPrefix(name string) string { return "_INBOX_" + name }

// Permissions returns what the server lets member m publish and subscribe
// to: the union of its roles' allowances, with the destructive JetStream
// API denied to every role but operator (a deny wins over any allow).
func Permissions(m Member) *server.Permissions {
	if m.Has(RoleOperator) {
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}},
		}
	}
	api := "$JS.API."
	pub := []string{api + "INFO"}
	sub := []string{InboxPrefix(m.Name) + ".>"}
	if m.Has(RoleAdmin) || m.Has(RoleVerifier) {
		// Following KEYS with ordered consumers, whose names are random;
		// reading single events (snapshot checks, the admin API).
		pub = append(pub,
			api+"STREAM.INFO."+KeysStream, api+"STREAM.INFO."+UsageStream, api+"STREAM.MSG.GET."+KeysStream,
			api+"CONSUMER.CREATE."+KeysStream+".*", api+"CONSUMER.CREATE."+KeysStream+".*.>",
			api+"CONSUMER.MSG.NEXT."+KeysStream+".*", api+"CONSUMER.INFO."+KeysStream+".*",
			// An ordered consumer deletes the consumer it replaces
			// (names are random, so this is any KEYS consumer; the
			// analytics durable is denied below). Deleting another
			// node's consumer only makes it recreate one: its table
			// keeps moving meanwhile (see projector.fill).
			api+"CONSUMER.DELETE."+KeysStream+".*",
			UsageBatchSubject(keyledger.EnvLive, m.Name), UsageBatchSubject(keyledger.EnvTest, m.Name),
			NodesSubjectPrefix+m.Name,
			// Following the checkpoints and cosigning them, under its
			// own name only.
			api+"STREAM.INFO."+AuditStream, api+"STREAM.MSG.GET."+AuditStream,
			api+"CONSUMER.CREATE."+AuditStream+".*", api+"CONSUMER.CREATE."+AuditStream+".*.>",
			api+"CONSUMER.MSG.NEXT."+AuditStream+".*", api+"CONSUMER.INFO."+AuditStream+".*",
			api+"CONSUMER.DELETE."+AuditStream+".*",
			CosignSubjectPrefix+m.Name,
			// Drawing and returning quota leases (see package quota):
			// a verifier enforces the limits, so it writes the
			// counters.
			countersPrefix+">", api+"STREAM.INFO."+CountersStream,
			api+"DIRECT.GET."+CountersStream+".>", api+"STREAM.MSG.GET."+CountersStream,
			// Loading a published snapshot at a first start: reads only.
			api+"STREAM.INFO."+SnapshotsStream, api+"DIRECT.GET."+SnapshotsStream+".>", api+"STREAM.MSG.GET."+SnapshotsStream,
			api+"CONSUMER.CREATE."+SnapshotsStream, api+"CONSUMER.CREATE."+SnapshotsStream+".>",
			api+"CONSUMER.INFO."+SnapshotsStream+".*", api+"CONSUMER.DELETE."+SnapshotsStream+".*")
		sub = append(sub, NodesPingSubject)
	}
	if m.Has(RoleAdmin) {
		pub = append(pub, KeysSubjectPrefix+"*",
			api+"STREAM.CREATE."+KeysStream, api+"STREAM.CREATE."+UsageStream, api+"STREAM.UPDATE."+UsageStream,
			api+"STREAM.INFO."+AlertsStream, api+"STREAM.CREATE."+AlertsStream, api+"STREAM.UPDATE."+AlertsStream,
			api+"STREAM.CREATE."+AuditStream, CheckpointSubject,
			api+"STREAM.CREATE."+CountersStream, api+"STREAM.UPDATE."+CountersStream,
			api+"STREAM.CREATE."+SnapshotsStream, api+"STREAM.UPDATE."+SnapshotsStream, snapshotsPrefix+">",
			NodesPingSubject)
		sub = append(sub, NodesSubjectPrefix+"*")
	}
	if m.Has(RoleAnalytics) {
		for _, c := range analyticsDurables {
			stream, durable := c[0], c[1]
			pub = append(pub, api+"STREAM.INFO."+stream,
				api+"CONSUMER.CREATE."+stream+"."+durable, api+"CONSUMER.CREATE."+stream+"."+durable+".>",
				api+"CONSUMER.INFO."+stream+"."+durable, api+"CONSUMER.MSG.NEXT."+stream+"."+durable,
				"$JS.ACK."+stream+"."+durable+".>")
		}
		pub = append(pub, AlertSubjectPrefix+">", DeadLetterSubjectPrefix+">",
			// Watching the quota counters for the quota alerts: read
			// only, with ordered consumers.
			api+"STREAM.INFO."+CountersStream,
			api+"CONSUMER.CREATE."+CountersStream+".*", api+"CONSUMER.CREATE."+CountersStream+".*.>",
			api+"CONSUMER.MSG.NEXT."+CountersStream+".*", api+"CONSUMER.INFO."+CountersStream+".*",
			api+"CONSUMER.DELETE."+CountersStream+".*")
	}
	deny := []string{
		api + "STREAM.DELETE.>", api + "STREAM.PURGE.>", api + "STREAM.UPDATE." + KeysStream, api + "STREAM.UPDATE." + AuditStream,
		api + "STREAM.MSG.DELETE.>", api + "STREAM.SNAPSHOT.>", api + "STREAM.RESTORE.>",
		api + "STREAM.PEER.REMOVE.>", api + "STREAM.LEADER.STEPDOWN.>", api + "CONSUMER.LEADER.STEPDOWN.>",
		api + "CONSUMER.DELETE." + KeysStream + "." + AnalyticsKeysDurable, api + "CONSUMER.DELETE." + UsageStream + ".>",
		api + "CONSUMER.DELETE." + AlertsStream + ".>",
		api + "CONSUMER.DURABLE.CREATE.>", api + "CONSUMER.PAUSE.>",
		api + "CONSUMER.UNPIN.>", api + "ACCOUNT.PURGE.>", api + "META.>", api + "SERVER.>", "$SYS.>",
	}
	if !m.Has(RoleAnalytics) {
		// Ordered consumers need CONSUMER.CREATE.KEYS.*; the analytics
		// durables must stay analytics'.
		for _, c := range analyticsDurables {
			deny = append(deny, api+"CONSUMER.CREATE."+c[0]+"."+c[1], api+"CONSUMER.CREATE."+c[0]+"."+c[1]+".>")
		}
	}
	sort.Strings(pub)
	sort.Strings(sub)
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: dedup(pub), Deny: deny},
		Subscribe: &server.SubjectPermission{Allow: dedup(sub), Deny: []string{"$SYS.>"}},
	}
}

func dedup(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// Identity is a member's own credentials: its name and nkey seed.
type Identity struct {
	Name string
	kp   nkeys.KeyPair
	pub  string
}

// LoadIdentity reads an nkey seed file (as GenerateFleet writes it, or as
// `nk -gen user` does) for member name. Errors never repeat the seed.
func LoadIdentity(path, name string) (*Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "cannot read NATS nkey file: %v", err)
	}
	return ParseIdentity(b, name)
}

// ParseIdentity parses an nkey seed for member name.
func ParseIdentity(seed []byte, name string) (*Identity, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	var line []byte
	for _, l := range strings.Split(string(seed), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "SU") {
			line = []byte(l)
			break
		}
	}
	kp, err := nkeys.FromSeed(line)
	if err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "the NATS nkey file holds no user seed (SU…)")
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "the NATS nkey file holds no user seed (SU…)")
	}
	return &Identity{Name: name, kp: kp, pub: pub}, nil
}

// PublicKey is the identity's public nkey, as the fleet file lists it.
func (id *Identity) PublicKey() string { return id.pub }

// Sign signs data with the identity's key (heartbeats).
func (id *Identity) Sign(data []byte) ([]byte, error) { return id.kp.Sign(data) }

// Options are the connect options that authenticate as the identity and
// keep replies in its own inbox.
func (id *Identity) Options() []natsgo.Option {
	return []natsgo.Option{natsgo.Nkey(id.pub, id.kp.Sign), natsgo.CustomInboxPrefix(InboxPrefix(id.Name))}
}

// GenerateFleet creates credentials for the given members (their NKey is
// filled in) into dir: <name>.nk, each member's seed, mode 0600;
// fleet.json; nats-auth.conf, the same users as an `authorization` block
// for an external nats-server; and, when routes is true, route credentials
// in the fleet file and nats-routes.conf for the `cluster` block of an
// external cluster. It overwrites nothing: an existing file is an error.
func GenerateFleet(dir string, members []Member, routes bool, rand io.Reader) (*Fleet, error) {
	f := &Fleet{}
	seeds := map[string][]byte{}
	for _, m := range members {
		kp, err := nkeys.CreatePairWithRand(nkeys.PrefixByteUser, rand)
		if err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "cannot generate an nkey")
		}
		if m.NKey, err = kp.PublicKey(); err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "cannot generate an nkey")
		}
		if seeds[m.Name], err = kp.Seed(); err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "cannot generate an nkey")
		}
		f.Members = append(f.Members, m)
	}
	if routes {
		var pw [24]byte
		if _, err := io.ReadFull(rand, pw[:]); err != nil {
			return nil, keyledger.Wrap(keyledger.Internal, err, "cannot generate a route password")
		}
		f.Routes = &RouteAuth{Username: "keyledger-route", Password: base64.RawURLEncoding.EncodeToString(pw[:])}
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, keyledger.Wrap(keyledger.Internal, err, "cannot create "+dir)
	}
	files := map[string][]byte{"fleet.json": nil, "nats-auth.conf": []byte(f.ServerAuthConf())}
	if f.Routes != nil {
		files["nats-routes.conf"] = []byte(f.RouteAuthConf())
	}
	for name, seed := range seeds {
		files[name+".nk"] = append(seed, '\n')
	}
	for name := range files {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return nil, keyledger.Errorf(keyledger.Conflict, "%s already exists: credentials are never overwritten", filepath.Join(dir, name))
		}
	}
	for name, b := range files {
		path := filepath.Join(dir, name)
		var err error
		if name == "fleet.json" {
			err = f.Write(path)
		} else {
			err = writeSecret(path, b)
		}
		if err != nil {
			return nil, err
		}
	}
	return f, nil
}

// ServerAuthConf renders the fleet's users, with the permissions this
// package gives them, as a nats-server `authorization` block: the same
// rules for an external NATS deployment as for the embedded server.
func (f *Fleet) ServerAuthConf() string {
	var b strings.Builder
	b.WriteString("# Generated by keyledger: one nkey user per fleet member, with its roles' permissions.\n")
	b.WriteString("# The server holds public keys only; each member keeps its own seed.\n")
	b.WriteString("authorization {\n  users = [\n")
	for _, m := range f.Members {
		p := Permissions(m)
		roles := make([]string, len(m.Roles))
		for i, r := range m.Roles {
			roles[i] = string(r)
		}
		fmt.Fprintf(&b, "    # %s (%s)\n    {\n      nkey: %q\n      permissions: {\n", m.Name, strings.Join(roles, ", "), m.NKey)
		fmt.Fprintf(&b, "        publish: { allow: %s, deny: %s }\n", confList(p.Publish.Allow), confList(p.Publish.Deny))
		fmt.Fprintf(&b, "        subscribe: { allow: %s, deny: %s }\n", confList(p.Subscribe.Allow), confList(p.Subscribe.Deny))
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

// RouteAuthConf renders the route credentials as the `authorization`
// block of a nats-server `cluster` block (include it there).
func (f *Fleet) RouteAuthConf() string {
	if f.Routes == nil {
		return ""
	}
	return fmt.Sprintf("# Generated by keyledger: what cluster members present on routes.\nauthorization {\n  user: %q\n  password: %q\n}\n",
		f.Routes.Username, f.Routes.Password)
}

func confList(s []string) string {
	q := make([]string, len(s))
	for i, x := range s {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
