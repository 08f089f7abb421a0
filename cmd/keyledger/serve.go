package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/keyledger/keyledger/internal/cli"

	keyledger "github.com/keyledger/keyledger"
	khttp "github.com/keyledger/keyledger/http"
	"github.com/keyledger/keyledger/nats"
	"github.com/keyledger/keyledger/node"
	"github.com/keyledger/keyledger/verifier"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := node.Config{}
	var env, perms, routes, logFormat, trustedProxies string
	host, _ := os.Hostname()
	fs.StringVar(&cfg.Role, "role", cli.EnvOr("KEYLEDGER_ROLE", node.RoleAdmin), "admin (admin API + verifier) or verifier (verifier only; needs --nats)")
	fs.StringVar(&cfg.DataDir, "data", cli.EnvOr("KEYLEDGER_DATA", "./data"), "data directory (JetStream files, admin-token)")
	fs.StringVar(&cfg.HTTPAddr, "http", cli.EnvOr("KEYLEDGER_HTTP", "127.0.0.1:8080"), "HTTP listen address")
	fs.StringVar(&cfg.AdminHTTPAddr, "admin-http", os.Getenv("KEYLEDGER_ADMIN_HTTP"), "serve the admin API, analytics and /metrics on this address, and only verification on --http (\"\" = everything on --http)")
	fs.StringVar(&trustedProxies, "trusted-proxies", cli.EnvOr("KEYLEDGER_TRUSTED_PROXIES", "127.0.0.0/8,::1/128"), "CIDR prefixes of the gateways whose X-Forwarded-*/X-Original-*/X-Real-IP headers are believed, comma-separated (none = nobody's)")
	fs.StringVar(&env, "environment", cli.EnvOr("KEYLEDGER_ENVIRONMENT", "live"), "environment this node verifies: live or test")
	fs.StringVar(&cfg.NATSURL, "nats", os.Getenv("KEYLEDGER_NATS"), "URL(s) of an existing NATS deployment, comma-separated (default: run an embedded server)")
	fs.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "where the embedded NATS server listens for other nodes and tools (\"\" = in-process only)")
	fs.StringVar(&cfg.Credentials, "credentials", os.Getenv("KEYLEDGER_CREDENTIALS"), "directory from `keyledger creds generate` (default for a single node: generated into DATA/credentials)")
	fs.StringVar(&cfg.Fleet, "fleet", "", "fleet file: members' public nkeys, roles, route credentials (default CREDENTIALS/fleet.json)")
	fs.StringVar(&cfg.NATSNKey, "nats-nkey", os.Getenv("KEYLEDGER_NATS_NKEY"), "this node's NATS nkey seed file (default CREDENTIALS/NODE.nk)")
	fs.StringVar(&cfg.SigningKey, "signing-key", "", "admin nodes: the ledger signing key (default CREDENTIALS/NODE.signing-key)")
	fs.StringVar(&cfg.TrustedSigners, "trusted-signers", "", "keyring of admin signing keys, one per line, optionally until=SEQ (default CREDENTIALS/trusted-signers)")
	fs.StringVar(&cfg.WitnessKey, "witness-key", "", "this node's key for cosigning checkpoints (default CREDENTIALS/NODE.witness-key; none: no cosigning)")
	fs.StringVar(&cfg.Witnesses, "witnesses", "", "the nodes' public witness keys, one per line (default CREDENTIALS/witnesses)")
	fs.StringVar(&cfg.AuditOrigin, "audit-origin", cli.EnvOr("KEYLEDGER_AUDIT_ORIGIN", "keyledger/KEYS"), "the name of this ledger in its signed checkpoints (one per ledger, e.g. api.example.com/keyledger)")
	fs.Int64Var(&cfg.CheckpointEvery, "checkpoint-every", 1000, "admin nodes publish a checkpoint after this many events…")
	fs.DurationVar(&cfg.CheckpointInterval, "checkpoint-interval", time.Minute, "…or this long after the last one, when there are new events")
	fs.DurationVar(&cfg.SnapshotPublishEvery, "snapshot-publish-every", time.Hour, "admin nodes: publish the newest snapshot this often for nodes that start empty (0: never)")
	fs.BoolVar(&cfg.CheckEverySignature, "check-every-signature", false, "replay the ledger checking every event's signature, even those the newest signed checkpoint vouches for")
	fs.Uint64Var(&cfg.TrustUnsignedThrough, "trust-unsigned-through", 0, "adopt a ledger written before signing: apply unsigned events up to this KEYS sequence (logged at every start)")
	fs.StringVar(&cfg.Cluster, "cluster", "", "host:port for routes from other embedded servers: makes this node a NATS cluster member")
	fs.StringVar(&cfg.ClusterName, "cluster-name", "keyledger", "NATS cluster name")
	fs.StringVar(&routes, "routes", "", "the other cluster members, comma-separated nats-route://host:port URLs")
	fs.IntVar(&cfg.Replicas, "replicas", 1, "replicas of each stream (3 in a 3-node cluster)")
	fs.StringVar(&cfg.Sync, "sync", "always", "embedded JetStream fsync: always (every write before its ack) or an interval such as 2m")
	fs.StringVar(&cfg.AdminToken, "admin-token", os.Getenv("KEYLEDGER_ADMIN_TOKEN"), "admin bearer token (default: generated into DATA/admin-token)")
	fs.StringVar(&cfg.Prefix, "prefix", keyledger.DefaultPrefix, "product prefix of keys")
	fs.StringVar(&perms, "permissions", strings.Join(keyledger.DefaultPermissions, ","), "permission catalog, comma-separated")
	fs.Float64Var(&cfg.TestRateLimit.PerSecond, "test-rate", verifier.DefaultTestRateLimit.PerSecond, "requests/s per test key")
	fs.IntVar(&cfg.TestRateLimit.Burst, "test-burst", verifier.DefaultTestRateLimit.Burst, "burst per test key")
	fs.IntVar(&cfg.FleetSize, "fleet-size", 3, "nodes that verify: quota leases shrink to remaining/(2 × this) near a limit, so its last units are near-exact")
	fs.Int64Var(&cfg.LeaseMax, "lease-max", 1000, "the most units of a quota, credits or fleet-wide rate a node draws at once")
	fs.DurationVar(&cfg.LeaseIdle, "lease-idle", 10*time.Second, "a quota lease untouched this long goes back to its counter")
	fs.StringVar(&cfg.Name, "node", host, "name of this node (unique): NATS server name, heartbeats, usage events")
	fs.Int64Var(&cfg.UsageMaxBytes, "usage-max-bytes", 10<<30, "bytes USAGE may hold, reserved on disk by JetStream (oldest events dropped beyond)")
	fs.DurationVar(&cfg.UsageMaxAge, "usage-max-age", 7*24*time.Hour, "how long USAGE keeps events")
	fs.DurationVar(&cfg.UsageLinger, "usage-linger", nats.DefaultUsageLinger, "how long a batch of KeyUsed events waits for more before it is published (negative: no wait)")
	fs.DurationVar(&cfg.MaxStaleness, "max-staleness", 5*time.Second, "refuse verifications (503) when the node cannot confirm it is current for this long")
	fs.IntVar(&cfg.MaxConns, "max-conns", 0, "HTTP connections held at once per listener (0: 262144); past it new ones get 503")
	fs.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", 0, "HTTP connections held at once per client address (0: no cap; a gateway is one address)")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", nats.DefaultWriteTimeout, "how long a ledger write or read retries through a leader election before answering 503")
	fs.BoolVar(&cfg.FailOpen, "fail-open", false, "keep verifying from a stale table instead of answering 503 (unsafe: a revoked key may pass)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long a clean shutdown may take")
	fs.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&cfg.ClickHouse, "clickhouse", os.Getenv("KEYLEDGER_CLICKHOUSE_DSN"), "turn analytics on: clickhouse://HOST:PORT/DB (native protocol)")
	fs.DurationVar(&cfg.DetectInterval, "detect-interval", 30*time.Second, "how often the anomaly detector runs")
	fs.StringVar(&cfg.AlertWebhook, "alert-webhook", "", "POST every alert notice (firing, updated, resolved) to this URL")
	fs.StringVar(&cfg.AlertWebhookFormat, "alert-webhook-format", "json", "webhook payload: json (the notice), slack (incoming webhook) or pagerduty (Events API v2; routing key from env KEYLEDGER_ALERT_PAGERDUTY_KEY)")
	// The secret's default is read after parsing: a flag default would
	// be printed by --help.
	fs.StringVar(&cfg.AlertWebhookSecret, "alert-webhook-secret", "", "sign every webhook delivery with HMAC-SHA256, header X-Keyledger-Signature (default: env KEYLEDGER_ALERT_WEBHOOK_SECRET, which process listings do not show)")
	fs.IntVar(&cfg.RetentionMonths, "retention-months", 13, "months of raw usage rows kept in ClickHouse (rollups are kept)")
	fs.StringVar(&cfg.LeakAction, "leak-action", "revoke", "what a leak report does to an active key: revoke, or alert only")
	fs.StringVar(&cfg.GitHubScanningKeys, "github-scanning-keys", "", "GitHub's secret-scanning public key file (api.github.com/meta/public_keys/secret_scanning); enables POST /v1/leaks/github")
	fs.BoolVar(&cfg.NoConsole, "no-console", false, "serve no web console (admin nodes serve it at /console/ by default)")
	var metaHeaders string
	fs.StringVar(&metaHeaders, "authz-meta-headers", "", "metadata members forward auth hands to the upstream, e.g. plan,tenant → X-Key-Meta-Plan, X-Key-Meta-Tenant")
	if pos, err := parseArgs(fs, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usageErr("serve takes flags only")
	}
	var err error
	if cfg.Environment, err = keyledger.ParseEnvironment(env); err != nil {
		return usageErr("--environment: %s", keyledger.ErrorMessage(err))
	}
	if cfg.TrustedProxies, err = khttp.ParseTrustedProxies(trustedProxies); err != nil {
		return usageErr("--trusted-proxies: %s", keyledger.ErrorMessage(err))
	}
	cfg.Permissions = cli.SplitList(perms)
	cfg.AuthzMetaHeaders = cli.SplitList(metaHeaders)
	cfg.AlertPagerDutyKey = os.Getenv("KEYLEDGER_ALERT_PAGERDUTY_KEY")
	// A secret: from the environment only, never a flag (--help, ps).
	cfg.GitLabRevocationToken = os.Getenv("KEYLEDGER_GITLAB_REVOCATION_TOKEN")
	if cfg.AlertWebhookSecret == "" {
		cfg.AlertWebhookSecret = os.Getenv("KEYLEDGER_ALERT_WEBHOOK_SECRET")
	}
	cfg.Routes = cli.SplitList(routes)
	switch logFormat {
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(stderr, nil))
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	default:
		return usageErr("--log-format must be text or json")
	}
	n, err := node.Open(ctx, cfg)
	if err != nil {
		return err
	}
	runErr := n.Run(ctx)
	cfg.Logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(runErr, n.Close(sctx))
}
