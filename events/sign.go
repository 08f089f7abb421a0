package events

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"

	keyledger "github.com/keyledger/keyledger"
	"golang.org/x/mod/sumdb/note"
)

// A ledger event is stored as a signed note (golang.org/x/mod/sumdb/note,
// the format of the Go checksum database): the note's text is the event's
// JSON and a newline, followed by a blank line and one signature line per
// signer, "— <signer> base64(key hash ‖ Ed25519 signature)". The JSON
// inside is schema version 1, unchanged: signing is an envelope around
// events, not a new version of them, so a reader that strips the envelope
// decodes events written before and after signing the same way.
//
// Why a note rather than a NATS header: the signature travels with the
// stored bytes (a Merkle leaf over them covers it), any tool that reads the
// stream sees it, and the format, its parser and its key encoding are
// maintained by the Go team, not written here.

// Reasons an event is not applied. Each is also the reason label of
// keyledger_projector_rejected_total.
var (
	// ErrUnsigned: bare JSON, with no signature block.
	ErrUnsigned = errors.New("event is not signed")
	// ErrUnknownSigner: signed, but by no key of the keyring.
	ErrUnknownSigner = errors.New("event is signed by an unknown key")
	// ErrBadSignature: a trusted key's signature does not verify.
	ErrBadSignature = errors.New("event signature does not verify")
	// ErrSignerRetired: signed by a trusted key after the sequence it
	// was retired at.
	ErrSignerRetired = errors.New("event is signed by a key retired before it")
	// ErrMalformedEnvelope: neither JSON nor a well-formed signed note.
	ErrMalformedEnvelope = errors.New("event envelope is malformed")
	// ErrSubjectMismatch: the event names a key other than its subject's.
	ErrSubjectMismatch = errors.New("event key_id does not match its subject")
	// ErrReplayed: a reversible event whose Prev is not the key's last
	// event: a copy of an old event put back into the stream.
	ErrReplayed = errors.New("event does not follow the key's last event (replayed)")
)

// RejectReason is the stable, low-cardinality name of why an event was
// refused: a metric label and an alert field.
func RejectReason(err error) string {
	switch {
	case errors.Is(err, ErrUnsigned):
		return "unsigned"
	case errors.Is(err, ErrUnknownSigner):
		return "unknown_signer"
	case errors.Is(err, ErrBadSignature):
		return "bad_signature"
	case errors.Is(err, ErrSignerRetired):
		return "signer_retired"
	case errors.Is(err, ErrMalformedEnvelope):
		return "malformed"
	case errors.Is(err, ErrSubjectMismatch):
		return "subject_mismatch"
	case errors.Is(err, ErrReplayed):
		return "replayed"
	default:
		return "invalid"
	}
}

// GenerateSigningKey returns a new Ed25519 signing key named name, in
// note's encodings: skey ("PRIVATE+KEY+name+hash+…") is the secret an
// admin node signs with, vkey ("name+hash+…") the line every node trusts.
func GenerateSigningKey(rand io.Reader, name string) (skey, vkey string, err error) {
	skey, vkey, err = note.GenerateKey(rand, name)
	if err != nil {
		return "", "", keyledger.Errorf(keyledger.Invalid, "cannot generate a signing key named %q: %v", name, err)
	}
	return skey, vkey, nil
}

// Signer signs the ledger events an admin node writes.
type Signer struct {
	s note.Signer

	// recent holds the SHA-256 of the last messages sealed, so that this
	// node's own projector (Keyring.TrustSealedBy) need not check again
	// a signature it made itself: ~50 µs saved on the writer's path of
	// every write.
	mu     sync.Mutex
	recent map[[32]byte]struct{}
	order  [][32]byte
}

// recentSealed bounds Signer.recent: far more than the writes in flight.
const recentSealed = 4096

func (s *Signer) remember(msg []byte) {
	h := sha256.Sum256(msg)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recent == nil {
		s.recent = make(map[[32]byte]struct{}, recentSealed)
	}
	if len(s.order) >= recentSealed {
		delete(s.recent, s.order[0])
		s.order = s.order[1:]
	}
	s.recent[h] = struct{}{}
	s.order = append(s.order, h)
}

// sealed reports whether s itself sealed msg recently.
func (s *Signer) sealed(msg []byte) bool {
	h := sha256.Sum256(msg)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.recent[h]
	return ok
}

// NewSigner parses a private signing key (as GenerateSigningKey returns).
// The error never repeats the key.
func NewSigner(skey string) (*Signer, error) {
	s, err := note.NewSigner(strings.TrimSpace(skey))
	if err != nil {
		return nil, keyledger.Errorf(keyledger.Invalid, "not a signing key (want PRIVATE+KEY+name+hash+key)")
	}
	return &Signer{s: s}, nil
}

// Name is the signer's name, as its signature lines carry it.
func (s *Signer) Name() string { return s.s.Name() }

// NoteSigner is the signer's key as a note.Signer: admin nodes sign the
// ledger's checkpoints with the key they sign its events with. The two
// cannot be confused: an event's text starts with '{', a checkpoint's
// with its origin, which never does.
func (s *Signer) NoteSigner() note.Signer { return s.s }

// KeyID names the signing key: name+hash, as in the keyring.
func (s *Signer) KeyID() string { return s.s.Name() + "+" + fmt.Sprintf("%08x", s.s.KeyHash()) }

// Seal returns the stored form of an encoded event: the event's JSON as a
// note signed by s.
func (s *Signer) Seal(event []byte) ([]byte, error) {
	if len(event) == 0 || event[0] != '{' {
		return nil, keyledger.Errorf(keyledger.Invalid, "only an encoded event can be sealed")
	}
	text := make([]byte, 0, len(event)+1)
	text = append(text, event...)
	text = append(text, '\n')
	msg, err := note.Sign(&note.Note{Text: string(text)}, s.s)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Internal, err, "cannot sign the event")
	}
	s.remember(msg)
	return msg, nil
}

// TrustedSigner is one public key of a keyring.
type TrustedSigner struct {
	// Key is the verifier key, "name+hash+base64".
	Key string
	// Until, when not 0, retires the key: events it signed at stream
	// sequences after Until are refused. Rotation adds a new key,
	// switches the admin nodes to it, then sets Until on the old one to
	// the last sequence it signed; a compromised key is retired at the
	// last sequence known good.
	Until uint64

	v note.Verifier
}

// Name is the signer's name.
func (t TrustedSigner) Name() string { return t.v.Name() }

// Keyring is the set of public keys whose signatures a node trusts. It is
// safe for concurrent use.
type Keyring struct {
	mu              sync.RWMutex
	signers         map[string]TrustedSigner // by name+hash
	unsignedThrough uint64
	local           *Signer
}

// TrustSealedBy lets Open accept, without checking the signature again,
// the exact bytes s sealed recently: this node's own writes, whose
// signature it made itself (same bytes, so the same answer as a check).
// s's key must be in the keyring and not retired; it is still checked
// against retirement like any other.
func (r *Keyring) TrustSealedBy(s *Signer) {
	r.mu.Lock()
	r.local = s
	r.mu.Unlock()
}

// NewKeyring returns a keyring of the given verifier keys (no Until).
func NewKeyring(vkeys ...string) (*Keyring, error) {
	r := &Keyring{signers: map[string]TrustedSigner{}}
	for _, k := range vkeys {
		if err := r.Add(TrustedSigner{Key: k}); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// ParseKeyring parses a trusted-signers file: one verifier key per line,
// optionally followed by "until=SEQ"; blank lines and lines starting with
// '#' are comments.
func ParseKeyring(text []byte) (*Keyring, error) {
	r := &Keyring{signers: map[string]TrustedSigner{}}
	for i, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		t := TrustedSigner{Key: f[0]}
		for _, opt := range f[1:] {
			v, ok := strings.CutPrefix(opt, "until=")
			n, err := strconv.ParseUint(v, 10, 64)
			if !ok || err != nil || n == 0 {
				return nil, keyledger.Errorf(keyledger.Invalid, "trusted signers line %d: unknown option %q (want until=SEQ)", i+1, opt)
			}
			t.Until = n
		}
		if err := r.Add(t); err != nil {
			return nil, keyledger.Errorf(keyledger.Invalid, "trusted signers line %d: %s", i+1, keyledger.ErrorMessage(err))
		}
	}
	if len(r.signers) == 0 {
		return nil, keyledger.Errorf(keyledger.Invalid, "trusted signers: no key")
	}
	return r, nil
}

// Add trusts one more key (or replaces the entry of the same key).
func (r *Keyring) Add(t TrustedSigner) error {
	v, err := note.NewVerifier(strings.TrimSpace(t.Key))
	if err != nil {
		// Never repeat the value: it may be a private key pasted in
		// the wrong file.
		return keyledger.Errorf(keyledger.Invalid, "not a verifier key (want name+hash+key)")
	}
	t.v = v
	r.mu.Lock()
	r.signers[keyID(v.Name(), v.KeyHash())] = t
	r.mu.Unlock()
	return nil
}

// TrustUnsignedThrough accepts unsigned events at stream sequences up to
// seq: the explicit, one-time adoption of a ledger written before events
// were signed. 0 (the default) accepts none.
func (r *Keyring) TrustUnsignedThrough(seq uint64) {
	r.mu.Lock()
	r.unsignedThrough = seq
	r.mu.Unlock()
}

// UnsignedThrough returns the sequence TrustUnsignedThrough set (0: none).
func (r *Keyring) UnsignedThrough() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.unsignedThrough
}

// Signers lists the keyring's keys, sorted.
func (r *Keyring) Signers() []TrustedSigner {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]TrustedSigner, 0, len(r.signers))
	for _, t := range r.signers {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Marshal renders the keyring as a trusted-signers file.
func (r *Keyring) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString("# keyledger trusted signers: one verifier key per line, optionally until=SEQ\n")
	for _, t := range r.Signers() {
		b.WriteString(t.Key)
		if t.Until != 0 {
			b.WriteString(" until=" + strconv.FormatUint(t.Until, 10))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// CheckRetired checks a verified note other than an event (a
// checkpoint, a snapshot manifest) that speaks for the ledger up to
// sequence seq: every signature a key of the keyring made must be by a key
// not retired before seq, as for events (ErrSignerRetired).
func (r *Keyring) CheckRetired(n *note.Note, seq uint64) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, s := range n.Sigs {
		if t := r.signers[keyID(s.Name, s.Hash)]; t.Until != 0 && seq > t.Until {
			return fmt.Errorf("%w: %s, retired at %d, signed for sequence %d", ErrSignerRetired, s.Name, t.Until, seq)
		}
	}
	return nil
}

// Digest identifies the keyring's verdicts: the SHA-256 of its signers
// file and the unsigned events it adopts. Two nodes with one digest refuse
// exactly the same events, which is what lets a checkpoint's list of
// refused events stand for every signature check a replay would make
// (see merkle.Verified).
func (r *Keyring) Digest() [32]byte {
	b := r.Marshal()
	b = append(b, "unsigned-through "+strconv.FormatUint(r.UnsignedThrough(), 10)+"\n"...)
	return sha256.Sum256(b)
}

func keyID(name string, hash uint32) string { return name + "+" + fmt.Sprintf("%08x", hash) }

// Verifier implements note.Verifiers.
func (r *Keyring) Verifier(name string, hash uint32) (note.Verifier, error) {
	r.mu.RLock()
	t, ok := r.signers[keyID(name, hash)]
	r.mu.RUnlock()
	if !ok {
		return nil, &note.UnknownVerifierError{Name: name, KeyHash: hash}
	}
	return t.v, nil
}

// Open checks the stored form of a ledger event found at stream sequence
// seq and returns the event's JSON and the name of the key that signed it
// ("" for an unsigned event adopted by TrustUnsignedThrough). The error is
// one of the Err… reasons above.
func (r *Keyring) Open(msg []byte, seq uint64) (event []byte, signer string, err error) {
	if len(msg) > 0 && msg[0] == '{' && !bytes.Contains(msg, []byte("\n\n\u2014 ")) {
		r.mu.RLock()
		through := r.unsignedThrough
		r.mu.RUnlock()
		if seq != 0 && seq <= through {
			return msg, "", nil
		}
		return nil, "", ErrUnsigned
	}
	r.mu.RLock()
	local := r.local
	r.mu.RUnlock()
	if local != nil && local.sealed(msg) {
		if ev, ok := r.openLocal(msg, local, seq); ok {
			return ev, local.Name(), nil
		}
	}
	n, err := note.Open(msg, r)
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		switch {
		case errors.As(err, &unverified):
			return nil, "", ErrUnknownSigner
		case errors.As(err, &invalid):
			return nil, "", ErrBadSignature
		default:
			return nil, "", ErrMalformedEnvelope
		}
	}
	// Every verified signature must be by a key still trusted at seq: a
	// retired key's signature next to a good one is a forgery's tell.
	r.mu.RLock()
	for _, s := range n.Sigs {
		if t := r.signers[keyID(s.Name, s.Hash)]; t.Until != 0 && seq > t.Until {
			r.mu.RUnlock()
			return nil, "", ErrSignerRetired
		}
	}
	r.mu.RUnlock()
	text := n.Text
	if len(text) == 0 || text[0] != '{' {
		return nil, "", ErrMalformedEnvelope
	}
	return []byte(strings.TrimSuffix(text, "\n")), n.Sigs[0].Name, nil
}

// openLocal splits a message the local signer sealed, if its key is still
// trusted at seq; anything unexpected falls back to the full check.
func (r *Keyring) openLocal(msg []byte, s *Signer, seq uint64) ([]byte, bool) {
	r.mu.RLock()
	t, ok := r.signers[s.KeyID()]
	r.mu.RUnlock()
	if !ok || t.Until != 0 && seq > t.Until {
		return nil, false
	}
	i := bytes.LastIndex(msg, []byte("\n\n\u2014 "))
	if i < 1 || msg[0] != '{' {
		return nil, false
	}
	return msg[:i], true
}

// Unseal returns the event inside a stored ledger message without checking
// any signature: for tools that display the ledger, never for deciding
// what a key may do.
func Unseal(msg []byte) []byte {
	if i := bytes.LastIndex(msg, []byte("\n\n\u2014 ")); i >= 0 {
		return msg[:i]
	}
	return msg
}
