package node

import (
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
	"golang.org/x/mod/sumdb/note"
)

// A credentials directory, as GenerateCredentials writes it and
// --credentials reads it:
//
//	fleet.json           every member's public nkey and roles, the route password (0600)
//	nats-auth.conf       the same users for an external nats-server (0600)
//	nats-routes.conf     route credentials for an external cluster (0600, with routes)
//	<member>.nk          each member's NATS nkey seed (0600): give each node only its own
//	<admin>.signing-key  each admin member's ledger signing key (0600)
//	trusted-signers      the admin members' public signing keys: every node's keyring
//	<node>.witness-key   each node member's key for cosigning checkpoints (0600)
//	witnesses            the node members' public witness keys
const (
	FleetFile          = "fleet.json"
	TrustedSignersFile = "trusted-signers"
	WitnessesFile      = "witnesses"
)

// NKeyFile and SigningKeyFile name a member's files in a credentials
// directory.
func NKeyFile(member string) string       { return member + ".nk" }
func SigningKeyFile(member string) string { return member + ".signing-key" }

// WitnessKeyFile names a node member's witness key file.
func WitnessKeyFile(member string) string { return member + ".witness-key" }

// WitnessName is the name of a node's witness key: distinct from its
// signing key's (the member name), so a cosignature never reads as the
// publisher's signature.
func WitnessName(member string) string { return member + "/witness" }

// GenerateCredentials writes a credentials directory for members: NATS
// nkeys for all, signing keys for those with the admin role, and the
// keyring trusting those. routes adds route credentials for an embedded
// or external NATS cluster. It never overwrites a file.
func GenerateCredentials(dir string, members []nats.Member, routes bool, random io.Reader) error {
	if random == nil {
		random = rand.Reader
	}
	if _, err := os.Stat(filepath.Join(dir, TrustedSignersFile)); err == nil {
		return keyledger.Errorf(keyledger.Conflict, "%s already holds credentials: they are never overwritten", dir)
	}
	if _, err := nats.GenerateFleet(dir, members, routes, random); err != nil {
		return err
	}
	ring, err := events.NewKeyring()
	if err != nil {
		return err
	}
	for _, m := range members {
		if !m.Has(nats.RoleAdmin) {
			continue
		}
		skey, vkey, err := events.GenerateSigningKey(random, m.Name)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, SigningKeyFile(m.Name)), []byte(skey+"\n"), 0o600); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot write a signing key")
		}
		if err := ring.Add(events.TrustedSigner{Key: vkey}); err != nil {
			return err
		}
	}
	if len(ring.Signers()) == 0 {
		return keyledger.Errorf(keyledger.Invalid, "credentials need at least one admin member: nobody could sign the ledger")
	}
	witnesses := "# keyledger witnesses: the nodes' public keys for cosigning checkpoints\n"
	for _, m := range members {
		if !m.Has(nats.RoleAdmin) && !m.Has(nats.RoleVerifier) {
			continue
		}
		skey, vkey, err := events.GenerateSigningKey(random, WitnessName(m.Name))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, WitnessKeyFile(m.Name)), []byte(skey+"\n"), 0o600); err != nil {
			return keyledger.Wrap(keyledger.Internal, err, "cannot write a witness key")
		}
		witnesses += vkey + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, WitnessesFile), []byte(witnesses), 0o644); err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "cannot write "+WitnessesFile)
	}
	if err := os.WriteFile(filepath.Join(dir, TrustedSignersFile), ring.Marshal(), 0o644); err != nil {
		return keyledger.Wrap(keyledger.Internal, err, "cannot write "+TrustedSignersFile)
	}
	return nil
}

// ParseMembers parses NAME=ROLE[+ROLE…] arguments.
func ParseMembers(args []string) ([]nats.Member, error) {
	var out []nats.Member
	for _, a := range args {
		name, roles, ok := strings.Cut(a, "=")
		if !ok || roles == "" {
			return nil, keyledger.Errorf(keyledger.Invalid, "member %q: want NAME=ROLE[+ROLE…]", a)
		}
		if err := nats.ValidName(name); err != nil {
			return nil, err
		}
		m := nats.Member{Name: name}
		for _, r := range strings.Split(roles, "+") {
			role, err := nats.ParseRole(r)
			if err != nil {
				return nil, err
			}
			m.Roles = append(m.Roles, role)
		}
		out = append(out, m)
	}
	return out, nil
}

// credentials are what a node proves itself and checks others with.
type credentials struct {
	fleet  *nats.Fleet     // nil on verifiers following an external NATS
	id     *nats.Identity  // this node on the bus
	signer *events.Signer  // admin nodes
	ring   *events.Keyring // every node
	// witness cosigns checkpoints; witnesses (and their file's text)
	// verify cosignatures. Nil without the files.
	witness       note.Signer
	witnesses     note.Verifiers
	witnessesText string
}

// loadCredentials finds the node's credentials: the explicit files, else
// the --credentials directory, else (a single node with an embedded
// server and nothing given) a directory it generates in DATA/credentials
// on first start, holding itself (admin and analytics) and an operator.
// Secrets are never logged: only paths.
func loadCredentials(cfg *Config, log *slog.Logger) (*credentials, error) {
	dir := cfg.Credentials
	explicit := cfg.Fleet != "" || cfg.NATSNKey != "" || cfg.SigningKey != "" || cfg.TrustedSigners != ""
	if dir == "" && !explicit {
		if cfg.NATSURL != "" || cfg.Cluster != "" {
			return nil, configErr("a node that joins others needs its credentials: --credentials DIR (from `keyledger creds generate`), or --nats-nkey, --trusted-signers (and --fleet, --signing-key on admin nodes)")
		}
		dir = filepath.Join(cfg.DataDir, "credentials")
		if _, err := os.Stat(filepath.Join(dir, FleetFile)); os.IsNotExist(err) {
			members := []nats.Member{
				{Name: cfg.Name, Roles: []nats.Role{nats.RoleAdmin, nats.RoleAnalytics}},
				{Name: "operator", Roles: []nats.Role{nats.RoleOperator}},
			}
			if cfg.Name == "operator" {
				return nil, configErr("--node operator is the break-glass member's name; choose another")
			}
			if err := GenerateCredentials(dir, members, false, nil); err != nil {
				return nil, err
			}
			log.Info("NATS and signing credentials generated", "dir", dir,
				"operator_nkey", filepath.Join(dir, NKeyFile("operator")))
		}
	}
	pick := func(flag, file string) string {
		if flag != "" || dir == "" {
			return flag
		}
		return filepath.Join(dir, file)
	}
	fleetPath := pick(cfg.Fleet, FleetFile)
	nkeyPath := pick(cfg.NATSNKey, NKeyFile(cfg.Name))
	signingPath := pick(cfg.SigningKey, SigningKeyFile(cfg.Name))
	ringPath := pick(cfg.TrustedSigners, TrustedSignersFile)
	witnessPath := pick(cfg.WitnessKey, WitnessKeyFile(cfg.Name))
	witnessesPath := pick(cfg.Witnesses, WitnessesFile)

	c := &credentials{}
	var err error
	if nkeyPath == "" {
		return nil, configErr("--nats-nkey: this node's NATS nkey seed is required")
	}
	if c.id, err = nats.LoadIdentity(nkeyPath, cfg.Name); err != nil {
		return nil, configErr("%s", keyledger.ErrorMessage(err))
	}
	embedded := cfg.NATSURL == ""
	if embedded || cfg.Role == RoleAdmin {
		if fleetPath == "" {
			return nil, configErr("--fleet: the fleet file is required on admin nodes and nodes with an embedded server")
		}
		if c.fleet, err = nats.LoadFleet(fleetPath); err != nil {
			return nil, configErr("%s", keyledger.ErrorMessage(err))
		}
		m, ok := c.fleet.Member(cfg.Name)
		if !ok || m.NKey != c.id.PublicKey() {
			return nil, configErr("node %q is not in the fleet file with this nkey", cfg.Name)
		}
		if cfg.Role == RoleAdmin && !m.Has(nats.RoleAdmin) {
			return nil, configErr("node %q runs the admin role but the fleet gives it %v", cfg.Name, m.Roles)
		}
		if cfg.ClickHouse != "" && !m.Has(nats.RoleAnalytics) {
			// Without the role the bus refuses its consumers, and
			// analytics would retry for ever.
			return nil, configErr("--clickhouse: node %q runs analytics but the fleet gives it %v; generate its credentials with %s=admin+analytics", cfg.Name, m.Roles, cfg.Name)
		}
	}
	if ringPath == "" {
		return nil, configErr("--trusted-signers: the keyring of admin signing keys is required")
	}
	b, err := os.ReadFile(ringPath)
	if err != nil {
		return nil, configErr("cannot read --trusted-signers: %v", err)
	}
	if c.ring, err = events.ParseKeyring(b); err != nil {
		return nil, configErr("%s", keyledger.ErrorMessage(err))
	}
	if cfg.TrustUnsignedThrough > 0 {
		c.ring.TrustUnsignedThrough(cfg.TrustUnsignedThrough)
		log.Warn("--trust-unsigned-through: unsigned ledger events up to this sequence are applied as if signed; events after it must be signed",
			"seq", cfg.TrustUnsignedThrough)
	}
	if cfg.Role == RoleAdmin {
		if signingPath == "" {
			return nil, configErr("--signing-key: admin nodes sign every ledger event they write")
		}
		sk, err := os.ReadFile(signingPath)
		if err != nil {
			return nil, configErr("cannot read --signing-key: %v", err)
		}
		if c.signer, err = events.NewSigner(string(sk)); err != nil {
			return nil, configErr("%s", keyledger.ErrorMessage(err))
		}
		trusted := false
		for _, t := range c.ring.Signers() {
			if strings.HasPrefix(t.Key, c.signer.KeyID()+"+") && t.Until == 0 {
				trusted = true
			}
		}
		if !trusted {
			// Its own writes would be refused by every node, itself included.
			return nil, configErr("the signing key %s is not in --trusted-signers (or is retired there)", c.signer.KeyID())
		}
		c.ring.TrustSealedBy(c.signer)
	}
	if err := c.loadWitness(cfg, witnessPath, witnessesPath, log); err != nil {
		return nil, err
	}
	log.Info("credentials", "nkey", nkeyPath, "trusted_signers", len(c.ring.Signers()), "signing_key", c.signerID(), "witness", c.witness != nil)
	return c, nil
}

// loadWitness reads the witness key and the witnesses file. Both are
// optional (a credentials directory from before checkpoints has neither):
// a missing default file means no cosigning; a named one must exist.
func (c *credentials) loadWitness(cfg *Config, keyPath, listPath string, log *slog.Logger) error {
	read := func(path string, explicit bool) ([]byte, error) {
		if path == "" {
			return nil, nil
		}
		b, err := os.ReadFile(path)
		if os.IsNotExist(err) && !explicit {
			return nil, nil
		}
		return b, err
	}
	b, err := read(keyPath, cfg.WitnessKey != "")
	if err != nil {
		return configErr("cannot read --witness-key: %v", err)
	}
	if b != nil {
		if c.witness, err = note.NewSigner(strings.TrimSpace(string(b))); err != nil {
			return configErr("--witness-key is not a witness key (want PRIVATE+KEY+name+hash+key)")
		}
	} else {
		log.Warn("no witness key: this node checks checkpoints but does not cosign them", "want", keyPath)
	}
	if b, err = read(listPath, cfg.Witnesses != ""); err != nil {
		return configErr("cannot read --witnesses: %v", err)
	}
	if b != nil {
		if c.witnesses, err = audit.ParseWitnesses(b); err != nil {
			return configErr("--witnesses: %v", err)
		}
		c.witnessesText = string(b)
	}
	return nil
}

func (c *credentials) signerID() string {
	if c.signer == nil {
		return ""
	}
	return c.signer.KeyID()
}
