package analytics

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/nats"
	"github.com/nats-io/nats.go/jetstream"
)

// WebhookSignatureHeader carries a webhook delivery's signature when
// Config.WebhookSecret is set:
//
//	X-Keyledger-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//
// The timestamp is signed with the body, so a receiver that checks it
// (VerifyWebhook: within 5 minutes) refuses a delivery replayed later.
const WebhookSignatureHeader = "X-Keyledger-Signature"

// SignWebhook returns the signature header value of body sent at t.
func SignWebhook(secret []byte, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(webhookMAC(secret, ts, body))
}

func webhookMAC(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Errors of VerifyWebhook.
var (
	ErrWebhookUnsigned = errors.New("webhook delivery is not signed")
	ErrWebhookBadMAC   = errors.New("webhook signature does not match")
	ErrWebhookStale    = errors.New("webhook signature is too old or from the future")
)

// VerifyWebhook checks a delivery as a receiver should: header is the
// X-Keyledger-Signature value, body the raw bytes received, and the
// signed time within tolerance of now (0: 5 minutes).
func VerifyWebhook(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = 5 * time.Minute
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return ErrWebhookUnsigned
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return ErrWebhookStale
	}
	want := webhookMAC(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return ErrWebhookBadMAC
}

// Webhook payload formats (Config.WebhookFormat).
const (
	// FormatJSON posts the Notice itself (schema:
	// deploy/alerting/notice.schema.json).
	FormatJSON = "json"
	// FormatSlack posts a Slack incoming-webhook message.
	FormatSlack = "slack"
	// FormatPagerDuty posts a PagerDuty Events API v2 event: trigger for
	// firing and updated (same dedup_key: PagerDuty updates the alert),
	// resolve for resolved.
	FormatPagerDuty = "pagerduty"
)

// ParseWebhookFormat checks a --alert-webhook-format value ("" is json).
func ParseWebhookFormat(s string) (string, error) {
	switch s {
	case "":
		return FormatJSON, nil
	case FormatJSON, FormatSlack, FormatPagerDuty:
		return s, nil
	}
	return "", keyledger.Errorf(keyledger.Invalid, "webhook format must be json, slack or pagerduty, not %s", keyledger.Quote(s))
}

// WebhookBody is what a webhook of format receives for n (routingKey:
// PagerDuty's integration key).
func WebhookBody(format string, n Notice, routingKey string) []byte {
	var v any = n
	switch format {
	case FormatSlack:
		v = slackMessage(n)
	case FormatPagerDuty:
		v = pagerDutyEvent(n, routingKey)
	}
	b, _ := json.Marshal(v)
	return b
}

func slackMessage(n Notice) map[string]any {
	var lines []string
	lines = append(lines, "*"+n.Summary+"*")
	if n.Detail != "" {
		lines = append(lines, n.Detail)
	}
	if len(n.NewAddresses) > 0 {
		shown := n.NewAddresses[:min(10, len(n.NewAddresses))]
		more := ""
		if len(n.NewAddresses) > len(shown) {
			more = fmt.Sprintf(" and %d more", len(n.NewAddresses)-len(shown))
		}
		lines = append(lines, "New addresses: "+strings.Join(shown, ", ")+more)
	}
	lines = append(lines, fmt.Sprintf("Incident %s · opened %s · %d findings", n.ID, n.OpenedAt.Format(time.RFC3339), n.Findings))
	return map[string]any{
		"text":   n.Summary,
		"blocks": []any{map[string]any{"type": "section", "text": map[string]any{"type": "mrkdwn", "text": strings.Join(lines, "\n")}}},
	}
}

var pagerDutySeverity = map[string]string{SeverityCritical: "critical", SeverityHigh: "error", SeverityMedium: "warning", SeverityLow: "info"}

func pagerDutyEvent(n Notice, routingKey string) map[string]any {
	action := "trigger"
	if n.Notice == NoticeResolved {
		action = "resolve"
	}
	return map[string]any{
		"routing_key":  routingKey,
		"event_action": action,
		"dedup_key":    n.ID,
		"payload": map[string]any{
			"summary":        clipStr(n.Summary, 1024),
			"source":         "keyledger",
			"severity":       pagerDutySeverity[n.Severity],
			"timestamp":      n.UpdatedAt.Format(time.RFC3339),
			"component":      n.KeyID,
			"group":          n.Owner,
			"class":          n.Rule,
			"custom_details": n.Incident,
		},
	}
}

// postWebhook POSTs one notice, retrying network errors, 429 and 5xx with
// exponential backoff, at most WebhookAttempts times.
func (a *Analytics) postWebhook(ctx context.Context, n Notice) error {
	body := WebhookBody(a.cfg.WebhookFormat, n, a.cfg.PagerDutyRoutingKey)
	wait := 200 * time.Millisecond
	var last error
	for attempt := 1; attempt <= a.cfg.WebhookAttempts; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cfg.WebhookURL, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "keyledger-analytics")
		if len(a.cfg.WebhookSecret) > 0 {
			// Signed per attempt: a retry carries a fresh timestamp.
			req.Header.Set(WebhookSignatureHeader, SignWebhook(a.cfg.WebhookSecret, body, a.cfg.Now()))
		}
		resp, err := a.cfg.WebhookClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return nil
			}
			last = fmt.Errorf("webhook answered %s", resp.Status)
			if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
				return last
			}
		} else {
			last = err
		}
		if attempt == a.cfg.WebhookAttempts || !sleep(ctx, wait) {
			break
		}
		wait = min(2*wait, 5*time.Second)
	}
	return last
}

// webhookBudget bounds the deliveries of one notice.
const webhookBudget = 30 * time.Second

// deliverNotices feeds the webhook from ALERTS' durable consumer, which
// every analytics node shares: each notice is fetched, and posted, by one
// of them. A notice is acknowledged once the receiver took it; a failed
// delivery is redelivered after a minute, up to a day of attempts.
func (a *Analytics) deliverNotices(ctx context.Context) {
	js := a.cfg.JetStream
	var cons jetstream.Consumer
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 10*time.Second) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := js.CreateOrUpdateConsumer(cctx, nats.AlertsStream, jetstream.ConsumerConfig{
			Durable: nats.AnalyticsAlertsDurable, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverNewPolicy,
			AckWait: 2 * webhookBudget, MaxDeliver: 24 * 60, FilterSubject: AlertSubjectPrefix + ">",
		})
		cancel()
		if err == nil {
			cons = c
			break
		}
		a.log.Warn("analytics: cannot open the alert notices' consumer; retrying", "err", err)
		if !sleep(ctx, wait) {
			return
		}
	}
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		batch, err := cons.Fetch(16, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if ctx.Err() == nil {
				a.log.Warn("analytics: cannot fetch alert notices", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		for msg := range batch.Messages() {
			var n Notice
			if err := json.Unmarshal(msg.Data(), &n); err != nil || n.ID == "" {
				a.log.Error("analytics: undecodable alert notice dropped", "subject", msg.Subject(), "err", err)
				msg.Term()
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, webhookBudget)
			err := a.postWebhook(pctx, n)
			cancel()
			if err != nil {
				a.metrics.webhookFailed.Inc()
				a.log.Warn("analytics: webhook delivery failed; redelivering in 1m", "incident", n.ID, "notice", n.Notice, "err", err)
				msg.NakWithDelay(time.Minute)
				continue
			}
			a.metrics.webhookDelivered.Inc()
			msg.Ack()
		}
		cancel()
	}
}
