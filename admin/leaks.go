package admin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync"

	"github.com/google/uuid"
	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/events"
	"github.com/keyledger/keyledger/nats"
)

// Leak policies (Config.LeakAction).
const (
	// LeakRevoke revokes an active key reported leaked, at once.
	LeakRevoke = "revoke"
	// LeakAlert only records and alerts: an operator decides.
	LeakAlert = "alert"
)

// MaxLeakTokens bounds the tokens of one leak report.
const MaxLeakTokens = 5000

// LeakedToken is one token a scanner found.
type LeakedToken struct {
	Token string
	// Type is the reporter's name for the token's kind, echoed back.
	Type string
	// URL is where it was found.
	URL string
}

// LeakReport is one report: who found the tokens (Source: github, gitlab
// or the in-house scanner's name) and the tokens.
type LeakReport struct {
	Source string
	Tokens []LeakedToken
}

// Leak labels.
const (
	LeakTruePositive  = "true_positive"
	LeakFalsePositive = "false_positive"
)

// LeakResult is what a report found for one token. It never holds the
// token: TokenHash is its SHA-256, lowercase hex (the form a key's hash
// has in the ledger).
type LeakResult struct {
	TokenHash string `json:"token_hash"`
	TokenType string `json:"token_type,omitempty"`
	Label     string `json:"label"`
	// KeyID and Action (events.LeakRevoked, LeakAlerted,
	// LeakAlreadyRevoked) are set for a true positive.
	KeyID  string `json:"key_id,omitempty"`
	Action string `json:"action,omitempty"`
	// AppliedBy says how far a revocation spread (as a revoke's).
	AppliedBy string `json:"applied_by,omitempty"`
}

// Leak is a true positive, for the alert it raises.
type Leak struct {
	KeyID, Owner, Source, URL, Action string
	Environment                       keyledger.Environment
}

// leakWorkers revoke a report's keys in parallel: each revocation waits
// for the fleet (a few ms), and a report of 1,000 tokens must be answered
// within GitHub's 30 s.
const leakWorkers = 16

// ReportLeaks acts on a leak report, one code path for every reporter:
// each token is hashed and looked up; an active key is revoked at once
// (LeakRevoke, the default) with reason "leaked: <source> <url>" and actor
// "leak-report:<source>", or only alerted (LeakAlert); a revoked key is
// left as it is. Every true positive is recorded in the ledger
// (KeyLeakReported) and handed to Config.OnLeak for the key_leaked alert.
// Anything else is a false positive and leaves no trace but its count.
// A report sent again is idempotent: nothing is revoked twice, and the
// record of the same token, source and URL has the same event id (the
// ledger's Nats-Msg-Id window drops a copy sent within 2 minutes).
func (s *Service) ReportLeaks(ctx context.Context, r LeakReport) ([]LeakResult, error) {
	if err := checkText("source", r.Source, 64, true); err != nil {
		return nil, err
	}
	if len(r.Tokens) > MaxLeakTokens {
		return nil, keyledger.Errorf(keyledger.Invalid, "a report holds at most %d tokens, not %d", MaxLeakTokens, len(r.Tokens))
	}
	// Every key created before the report must be found: a node behind
	// the ledger would call a fresh key a false positive.
	if err := s.barrier(ctx); err != nil {
		return nil, err
	}
	out := make([]LeakResult, len(r.Tokens))
	type job struct {
		i  int
		id string
	}
	var jobs []job
	for i, t := range r.Tokens {
		sum := sha256.Sum256([]byte(t.Token))
		out[i] = LeakResult{TokenHash: hex.EncodeToString(sum[:]), TokenType: t.Type, Label: LeakFalsePositive}
		if len(t.Token) == 0 || len(t.Token) > 512 {
			continue
		}
		// Imported keys need not follow the format: the hash decides.
		h := keyledger.Hash(sum)
		if e := s.cfg.Projector.Table().Lookup(&h); e != nil {
			out[i].Label, out[i].KeyID = LeakTruePositive, e.ID()
			jobs = append(jobs, job{i, e.ID()})
		}
	}
	if len(jobs) == 0 {
		return out, nil
	}
	work := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range min(leakWorkers, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				res, err := s.leaked(ctx, r.Source, r.Tokens[j.i], j.id, out[j.i])
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				out[j.i] = res
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		// Every key that could be revoked was; the reporter retries the
		// whole report (idempotent) for the rest.
		return out, firstErr
	}
	return out, nil
}

// leaked acts on one true positive.
func (s *Service) leaked(ctx context.Context, source string, t LeakedToken, id string, res LeakResult) (LeakResult, error) {
	actor := "leak-report:" + source
	url := clipURL(t.URL)
	w := Write{Actor: actor, Wait: WaitAll}
	res.Action = events.LeakAlreadyRevoked
	k, known := s.cfg.Projector.Key(id)
	if !known || k.RevokedAt == nil {
		res.Action = events.LeakAlerted
		if s.cfg.LeakAction != LeakAlert {
			reason := strings.TrimSpace("leaked: " + source + " " + url)
			rv, err := s.Revoke(ctx, id, clipText(reason, maxReasonLen), w)
			switch {
			case err == nil:
				res.Action, res.AppliedBy = events.LeakRevoked, rv.AppliedBy
			case errors.Is(err, keyledger.ErrAlreadyRevoked):
				res.Action = events.LeakAlreadyRevoked
			default:
				return res, err
			}
		}
	}
	if err := s.recordLeak(ctx, id, source, url, res.Action, res.TokenHash, w); err != nil {
		return res, err
	}
	if s.cfg.OnLeak != nil {
		// Owner and environment never change: the record read above serves.
		s.cfg.OnLeak(Leak{KeyID: id, Owner: k.Owner, Source: source, URL: url, Action: res.Action, Environment: k.Environment})
	}
	s.cfg.Logger.Warn("leaked key reported", "key_id", id, "source", source, "url", url, "action", res.Action)
	return res, nil
}

// leakNamespace makes a leak record's event id a function of what was
// reported, so a report sent twice writes one record.
var leakNamespace = uuid.MustParse("6f1c0b64-8f3e-4e0a-9a57-3f7c3b0a6c21")

// recordLeak appends the KeyLeakReported record after the key's last
// event.
func (s *Service) recordLeak(ctx context.Context, id, source, url, action, tokenHash string, w Write) error {
	for attempt := 0; attempt < 5; attempt++ {
		last, err := s.cfg.Log.Last(ctx, id)
		if err != nil {
			return err
		}
		ev := &events.KeyLeakReported{Header: s.header(events.TypeKeyLeakReported, id, w), Source: source, URL: url, Action: action}
		ev.EventID = uuid.NewSHA1(leakNamespace, []byte(tokenHash+"\x00"+source+"\x00"+url)).String()
		if prev, ok := last.Event.(*events.KeyLeakReported); ok && prev.EventID == ev.EventID {
			return nil // this very report is the key's last event already
		}
		_, err = s.append(ctx, ev, last.Seq)
		if errors.Is(err, nats.ErrConflict) {
			continue
		}
		return err
	}
	return keyledger.Errorf(keyledger.Conflict, "key %s is being changed concurrently; report it again", id)
}

// clipURL bounds a reported URL and blanks any key-shaped value in it: a
// URL may carry the very secret it points at, and it goes into the
// ledger, the alert and the log.
func clipURL(u string) string {
	return clipText(keyledger.RedactSecrets(strings.TrimSpace(u), "[redacted]"), 2048)
}

// clipText cuts s to at most n bytes on a rune boundary, and drops
// control characters (a URL is the reporter's input).
func clipText(s string, n int) string {
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			continue
		}
		if b.Len()+len(string(r)) > n {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
