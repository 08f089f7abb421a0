// Package githubtest plays GitHub in tests: a locally generated secret
// scanning key pair, its key file in GitHub's format, and signed reports.
package githubtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// Signer is a GitHub-style secret-scanning key pair.
type Signer struct {
	// ID is the key_identifier.
	ID string
	// File is the key file GitHub would publish for it.
	File []byte
	priv *ecdsa.PrivateKey
}

// NewSigner generates a P-256 key pair named id.
func NewSigner(tb testing.TB, id string) *Signer {
	tb.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	file, err := json.Marshal(map[string]any{"public_keys": []map[string]any{{"key_identifier": id, "key": string(pemKey), "is_current": true}}})
	if err != nil {
		tb.Fatal(err)
	}
	return &Signer{ID: id, File: file, priv: priv}
}

// WriteFile writes the key file into dir and returns its path.
func (s *Signer) WriteFile(tb testing.TB, dir string) string {
	tb.Helper()
	p := filepath.Join(dir, "github-secret-scanning-keys.json")
	if err := os.WriteFile(p, s.File, 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

// Sign returns the Github-Public-Key-Signature of body.
func (s *Signer) Sign(tb testing.TB, body []byte) string {
	tb.Helper()
	sum := sha256.Sum256(body)
	sig, err := ecdsa.SignASN1(rand.Reader, s.priv, sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}
