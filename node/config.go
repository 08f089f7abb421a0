package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/admin"
	"github.com/keyledger/keyledger/analytics"
	"github.com/keyledger/keyledger/audit"
	khttp "github.com/keyledger/keyledger/http"
)

// Roles of a node.
const (
	// RoleAdmin serves the admin API and analytics besides verifying.
	RoleAdmin = "admin"
	// RoleVerifier only verifies; it follows an existing NATS deployment.
	RoleVerifier = "verifier"
)

// ErrConfig is the cause of every error Validate returns: the
// configuration, not the world, is wrong, and the command line that gave
// it should say so (exit code 2).
var ErrConfig = errors.New("invalid configuration")

func configErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
}

// Config is everything a node is told. Its fields are the flags of
// `keyledger serve`, which the messages of Validate name.
type Config struct {
	Role        string // RoleAdmin (default) or RoleVerifier
	DataDir     string
	HTTPAddr    string
	Environment keyledger.Environment
	NATSURL     string // an existing NATS deployment; "" runs an embedded server
	NATSListen  string // where the embedded server listens; "" in-process only
	// Credentials is a directory from GenerateCredentials; the four
	// files below override its parts. A single node with an embedded
	// server and none of them generates DATA/credentials.
	Credentials    string
	Fleet          string // fleet file: members, their nkeys and roles, route credentials
	NATSNKey       string // this node's NATS nkey seed file
	SigningKey     string // admin nodes: the ledger signing key
	TrustedSigners string // the keyring of admin signing keys
	// WitnessKey is this node's key for cosigning checkpoints, and
	// Witnesses the fleet's witness keys (public); both default to the
	// credentials directory's files, and without them a node does not
	// cosign (or verify cosignatures).
	WitnessKey string
	Witnesses  string
	// AuditOrigin names this ledger in its checkpoints (default
	// audit.DefaultOrigin); CheckpointEvery and CheckpointInterval are
	// how often admin nodes publish one (defaults 1000 events, 1m).
	AuditOrigin        string
	CheckpointEvery    int64
	CheckpointInterval time.Duration
	// SnapshotPublishEvery is how often an admin node publishes its
	// newest snapshot to the fleet's bucket, for nodes that start empty
	// (0: never).
	SnapshotPublishEvery time.Duration
	// CheckEverySignature replays the ledger checking every event's
	// signature, even those a signed checkpoint vouches for (ten times
	// slower; see projector's trust.go).
	CheckEverySignature bool
	// TrustUnsignedThrough adopts a ledger written before events were
	// signed: unsigned events up to this sequence are applied.
	TrustUnsignedThrough uint64
	Cluster              string
	ClusterName          string
	Routes               []string
	Replicas             int
	Sync                 string // "always" or a duration
	AdminToken           string // "" generates one into DataDir/admin-token
	Prefix               string
	Permissions          []string
	TestRateLimit        keyledger.RateLimit
	// FleetSize, LeaseMax and LeaseIdle tune the quota leases (see
	// package quota): the fleet size leases are sized for near a limit
	// (default 3), the largest lease (default 1000 units) and how long
	// an untouched lease is kept before it is returned (default 10s).
	FleetSize   int
	LeaseMax    int64
	LeaseIdle   time.Duration
	Name        string
	UsageMaxAge time.Duration
	// UsageMaxBytes bounds USAGE (and is what JetStream reserves for it
	// on disk); 0 = 10 GiB.
	UsageMaxBytes int64
	// MaxConns and MaxConnsPerIP cap the HTTP connections a listener
	// holds, in all and per client address (0: fasthttp's 256 Ki; none).
	MaxConns      int
	MaxConnsPerIP int
	UsageLinger   time.Duration
	MaxStaleness  time.Duration
	// WriteTimeout bounds how long a ledger write or read rides through a
	// leader election before it answers 503 (default
	// nats.DefaultWriteTimeout).
	WriteTimeout    time.Duration
	FailOpen        bool
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
	// NoUsage records no KeyUsed events. Only benchmarks set it, to show
	// what usage publishing costs.
	NoUsage bool

	// Analytics (admin role, with ClickHouse).
	ClickHouse     string
	DetectInterval time.Duration
	AlertWebhook   string
	// AlertWebhookSecret signs webhook deliveries (analytics.WebhookSignatureHeader).
	AlertWebhookSecret string
	// AlertWebhookFormat is the webhook's payload: json (the notice),
	// slack or pagerduty (analytics.WebhookBody); AlertPagerDutyKey is the
	// PagerDuty integration (routing) key of the pagerduty format.
	AlertWebhookFormat string
	AlertPagerDutyKey  string
	RetentionMonths    int

	// TrustedProxies are the peers whose forwarded headers (X-Forwarded-For,
	// X-Real-IP, X-Forwarded-Method/-Uri, X-Original-Method/-Uri) are
	// believed for usage records and admin events' actor_ip; anyone else's
	// request is recorded as it reached the node. nil: loopback only
	// (khttp.DefaultTrustedProxies); empty, non-nil: nobody.
	TrustedProxies []netip.Prefix
	// AuthzMetaHeaders are the metadata members forward auth answers as
	// X-Key-Meta-<Member> headers (see khttp.RouterOptions).
	AuthzMetaHeaders []string
	// LeakAction is what a leak report does to an active key: revoke
	// (default) or alert (admin.LeakRevoke, admin.LeakAlert).
	LeakAction string
	// GitHubScanningKeys is GitHub's secret-scanning public key file;
	// set, it enables POST /v1/leaks/github.
	GitHubScanningKeys string
	// GitLabRevocationToken enables GitLab's token revocation API for
	// requests bearing it.
	GitLabRevocationToken string
	// NoConsole leaves out the web console that admin nodes serve at
	// /console/ (on the admin listener when there is one).
	NoConsole bool
	// AdminHTTPAddr, if set, serves the admin API, analytics and /metrics
	// on a listener of their own, and HTTPAddr only the verifier's
	// endpoints, so that a gateway reaching /v1/authz cannot reach them.
	// "" serves everything on HTTPAddr. Admin nodes only.
	AdminHTTPAddr string
}

// Validate checks c and fills the defaults it can.
func (c *Config) Validate() error {
	if c.Role == "" {
		c.Role = RoleAdmin
	}
	switch c.Role {
	case RoleAdmin, RoleVerifier:
	default:
		return configErr("--role must be admin or verifier")
	}
	if c.Role == RoleVerifier && c.NATSURL == "" {
		return configErr("--role verifier follows an existing NATS deployment: give --nats URL")
	}
	switch c.LeakAction {
	case "":
		c.LeakAction = admin.LeakRevoke
	case admin.LeakRevoke, admin.LeakAlert:
	default:
		return configErr("--leak-action must be revoke or alert")
	}
	if c.GitLabRevocationToken != "" && len(c.GitLabRevocationToken) < 16 {
		return configErr("the GitLab revocation token must be at least 16 characters")
	}
	format, err := analytics.ParseWebhookFormat(c.AlertWebhookFormat)
	if err != nil {
		return configErr("--alert-webhook-format: %s", keyledger.ErrorMessage(err))
	}
	c.AlertWebhookFormat = format
	if format == analytics.FormatPagerDuty && c.AlertPagerDutyKey == "" {
		return configErr("--alert-webhook-format pagerduty needs a routing key: KEYLEDGER_ALERT_PAGERDUTY_KEY")
	}
	if c.ClickHouse != "" && c.Role != RoleAdmin {
		return configErr("--clickhouse runs analytics, which belongs on admin nodes")
	}
	if c.Cluster != "" && len(c.Routes) == 0 {
		// A JetStream cluster member with no route never elects a meta
		// leader: it would only time out at start.
		return configErr("--cluster makes this node a NATS cluster member: name the other members with --routes (a single node needs neither)")
	}
	if c.Cluster != "" && c.NATSListen == "" {
		return configErr("--cluster needs --nats-listen: cluster members and verifiers reach the embedded server there")
	}
	if c.Cluster != "" && c.NATSURL != "" {
		return configErr("--cluster makes the embedded server a cluster member; it does not combine with --nats")
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return configErr("--replicas must be 1 to 5")
	}
	if c.Name == "" || strings.ContainsAny(c.Name, " .*>\t") {
		return configErr("--node must be a name without spaces, dots or wildcards")
	}
	if c.Sync == "" {
		c.Sync = "always"
	}
	if c.Sync != "always" {
		if d, err := time.ParseDuration(c.Sync); err != nil || d <= 0 {
			return configErr("--sync must be always or a positive duration such as 2m")
		}
	}
	if c.AuditOrigin != "" {
		if err := audit.ValidOrigin(c.AuditOrigin); err != nil {
			return configErr("--audit-origin: %s", keyledger.ErrorMessage(err))
		}
	}
	if c.CheckpointEvery < 0 || c.CheckpointInterval < 0 {
		return configErr("--checkpoint-every and --checkpoint-interval must not be negative")
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		return configErr("--admin-token must be at least 16 characters")
	}
	if c.AdminHTTPAddr != "" && c.Role != RoleAdmin {
		return configErr("--admin-http is the admin API's listener, and verifier nodes have no admin API (their /metrics is on --http)")
	}
	if c.AdminHTTPAddr != "" && c.AdminHTTPAddr == c.HTTPAddr && !strings.HasSuffix(c.HTTPAddr, ":0") {
		return configErr("--admin-http must be another address than --http")
	}
	for _, p := range c.TrustedProxies {
		if !p.IsValid() {
			return configErr("--trusted-proxies holds an invalid prefix")
		}
	}
	if len(c.AuthzMetaHeaders) > khttp.MaxMetaHeaders {
		return configErr("--authz-meta-headers names %d members; at most %d", len(c.AuthzMetaHeaders), khttp.MaxMetaHeaders)
	}
	for _, f := range c.AuthzMetaHeaders {
		if err := khttp.ValidMetaHeader(f); err != nil {
			return configErr("%s", keyledger.ErrorMessage(err))
		}
	}
	return nil
}
