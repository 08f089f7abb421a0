package keyledger

// Outcome is the result of verifying one presented key. Every outcome but
// Valid refuses the request; the HTTP layer maps them to 401, 403 or 429.
type Outcome uint8

// Verification outcomes, in the order the verifier checks them.
const (
	OutcomeValid            Outcome = iota
	OutcomeMalformed                // missing, wrong shape, or bad checksum
	OutcomeUnknown                  // well-formed but not in the ledger
	OutcomeRevoked                  // revoked, forever
	OutcomeEnvMismatch              // a key of the other environment
	OutcomeExpired                  // past its expires_at
	OutcomeForbidden                // lacks the required permission
	OutcomeRateLimited              // over its token bucket
	OutcomeUnavailable              // the node cannot vouch for its table (stale)
	OutcomeDisabled                 // disabled (reversibly) by an operator
	OutcomeIPNotAllowed             // used from an address outside its allowed_ips
	OutcomeQuotaExceeded            // its owner's plan quota for the month is spent
	OutcomeCreditsExhausted         // its credits are spent
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"valid", "malformed", "unknown", "revoked", "env_mismatch", "expired", "forbidden", "rate_limited", "unavailable", "disabled", "ip_not_allowed", "quota_exceeded", "credits_exhausted"}

// String returns the wire name used in KeyUsed events and metrics.
func (o Outcome) String() string {
	if o < numOutcomes {
		return outcomeNames[o]
	}
	return "invalid"
}

// ParseOutcome is the inverse of String.
func ParseOutcome(s string) (Outcome, bool) {
	for i, n := range outcomeNames {
		if n == s {
			return Outcome(i), true
		}
	}
	return 0, false
}

// Outcomes lists every outcome, for metrics and docs.
func Outcomes() []Outcome {
	o := make([]Outcome, numOutcomes)
	for i := range o {
		o[i] = Outcome(i)
	}
	return o
}

// Code returns the error code a refused outcome is reported as; "" for Valid.
func (o Outcome) Code() Code {
	switch o {
	case OutcomeValid:
		return ""
	case OutcomeForbidden, OutcomeIPNotAllowed:
		return Forbidden
	case OutcomeRateLimited, OutcomeQuotaExceeded, OutcomeCreditsExhausted:
		return RateLimited
	case OutcomeUnavailable:
		return Unavailable
	}
	return Unauthorized
}
