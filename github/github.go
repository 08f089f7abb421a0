// Package github speaks GitHub's secret-scanning partner protocol: GitHub
// POSTs the tokens it found in public to the provider, signed with an
// ECDSA P-256 key it publishes, and reads back which were real.
//
// keyledger assumes no internet: the public keys come from a file in
// GitHub's own format (the body of
// https://api.github.com/meta/public_keys/secret_scanning), which the
// operator refreshes (see the README), never from a fetch at run time.
package github

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// The headers GitHub signs a report with.
const (
	KeyIdentifierHeader = "Github-Public-Key-Identifier"
	SignatureHeader     = "Github-Public-Key-Signature"
)

// Errors of Keys.Verify.
var (
	ErrUnsigned     = errors.New("github: the request carries no signature or key identifier")
	ErrUnknownKey   = errors.New("github: the request is signed with a key not in the key file")
	ErrBadSignature = errors.New("github: the signature does not match the body")
)

// keyFile is GitHub's public key document.
type keyFile struct {
	PublicKeys []struct {
		KeyIdentifier string `json:"key_identifier"`
		Key           string `json:"key"`
		IsCurrent     bool   `json:"is_current"`
	} `json:"public_keys"`
}

// Keys are GitHub's secret-scanning public keys by identifier. Every key
// in the file is accepted, current or not: GitHub rotates by publishing
// the new key before signing with it, and reports signed with the old
// one may still be in flight.
type Keys struct {
	byID map[string]*ecdsa.PublicKey
}

// LoadKeys reads a key file.
func LoadKeys(path string) (*Keys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("github: reading the secret-scanning key file: %w", err)
	}
	return ParseKeys(b)
}

// ParseKeys parses a key file's bytes: {"public_keys":[{"key_identifier",
// "key" (PEM, ECDSA P-256), "is_current"}]}.
func ParseKeys(b []byte) (*Keys, error) {
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("github: the key file is not GitHub's public_keys JSON: %w", err)
	}
	k := &Keys{byID: map[string]*ecdsa.PublicKey{}}
	for i, pk := range f.PublicKeys {
		if pk.KeyIdentifier == "" {
			return nil, fmt.Errorf("github: public_keys[%d] has no key_identifier", i)
		}
		block, _ := pem.Decode([]byte(pk.Key))
		if block == nil {
			return nil, fmt.Errorf("github: public_keys[%d].key is not PEM", i)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("github: public_keys[%d].key: %w", i, err)
		}
		ec, ok := pub.(*ecdsa.PublicKey)
		if !ok || ec.Curve != elliptic.P256() {
			return nil, fmt.Errorf("github: public_keys[%d].key is not an ECDSA P-256 key", i)
		}
		k.byID[pk.KeyIdentifier] = ec
	}
	if len(k.byID) == 0 {
		return nil, errors.New("github: the key file holds no public key")
	}
	return k, nil
}

// Len is the number of keys.
func (k *Keys) Len() int { return len(k.byID) }

// Verify checks a report as GitHub signs it: sig is the base64 ASN.1 DER
// ECDSA signature of the SHA-256 of the raw body, by the key named keyID.
// The raw bytes are what is signed: a body re-serialized in any way fails.
func (k *Keys) Verify(body []byte, keyID, sig string) error {
	if keyID == "" || sig == "" {
		return ErrUnsigned
	}
	pub, ok := k.byID[keyID]
	if !ok {
		return ErrUnknownKey
	}
	der, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return ErrBadSignature
	}
	sum := sha256.Sum256(body)
	if !ecdsa.VerifyASN1(pub, sum[:], der) {
		return ErrBadSignature
	}
	return nil
}

// Match is one token GitHub found.
type Match struct {
	Token  string `json:"token"`
	Type   string `json:"type"`
	URL    string `json:"url"`
	Source string `json:"source"`
}

// MaxMatches bounds the tokens of one report.
const MaxMatches = 5000

// DecodeReport decodes a report body: a JSON array of matches.
func DecodeReport(body []byte) ([]Match, error) {
	var ms []Match
	if err := json.Unmarshal(body, &ms); err != nil {
		return nil, errors.New("github: the report is not a JSON array of {token, type, url, source}")
	}
	if len(ms) > MaxMatches {
		return nil, fmt.Errorf("github: the report holds %d tokens; at most %d", len(ms), MaxMatches)
	}
	return ms, nil
}

// Labels of the feedback.
const (
	TruePositive  = "true_positive"
	FalsePositive = "false_positive"
)

// Feedback is one entry of the answer GitHub reads back: the token by its
// SHA-256 (lowercase hex, the form keyledger stores a key's hash in), its
// type as reported, and whether it was a real key.
type Feedback struct {
	TokenHash string `json:"token_hash"`
	TokenType string `json:"token_type"`
	Label     string `json:"label"`
}
