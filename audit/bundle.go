package audit

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	keyledger "github.com/keyledger/keyledger"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"
)

// An audit bundle is newline-delimited JSON, self-contained: a header
// line, every event of KEYS in sequence order (its exact stored bytes,
// signature included), then every checkpoint with the consistency proof
// from the checkpoint before it. The header carries the keys the
// exporting node trusts, for convenience only: an auditor checks against
// copies of their own (--trusted-signers, --witnesses), and against a
// checkpoint they saved before (--since-checkpoint).

// BundleHeader is a bundle's first line.
type BundleHeader struct {
	Format     string    `json:"keyledger_audit_bundle"`
	Origin     string    `json:"origin"`
	Size       int64     `json:"size"`
	ExportedAt time.Time `json:"exported_at"`
	// TrustedSigners and Witnesses are the exporting node's keyring and
	// witness keys, as files of verifier keys.
	TrustedSigners string `json:"trusted_signers,omitempty"`
	Witnesses      string `json:"witnesses,omitempty"`
}

// BundleFormat is BundleHeader.Format of this version.
const BundleFormat = "v1"

// BundleEvent is one stored event of KEYS.
type BundleEvent struct {
	Seq     uint64 `json:"seq"`
	Subject string `json:"subject"`
	Data    []byte `json:"data"` // base64 in JSON
}

// BundleCheckpoint is one checkpoint, with the proof that its tree
// extends the one of the checkpoint before it in the bundle.
type BundleCheckpoint struct {
	Checkpoint      string   `json:"checkpoint"` // the signed note
	ConsistencyFrom int64    `json:"consistency_from,omitempty"`
	Consistency     []string `json:"consistency,omitempty"` // base64 hashes
}

// BundleWriter writes a bundle line by line: Header first, then events,
// then checkpoints, then Flush.
type BundleWriter struct {
	bw  *bufio.Writer
	enc *json.Encoder
	err error
}

// NewBundleWriter returns a writer of a bundle to w.
func NewBundleWriter(w io.Writer) *BundleWriter {
	bw := bufio.NewWriterSize(w, 1<<16)
	return &BundleWriter{bw: bw, enc: json.NewEncoder(bw)}
}

func (b *BundleWriter) put(v any) {
	if b.err == nil {
		b.err = b.enc.Encode(v)
	}
}

// Header writes the header line.
func (b *BundleWriter) Header(h BundleHeader) { h.Format = BundleFormat; b.put(h) }

// Event writes an event line.
func (b *BundleWriter) Event(e BundleEvent) { b.put(bundleLine{BundleEvent: &e}) }

// Checkpoint writes a checkpoint line.
func (b *BundleWriter) Checkpoint(c BundleCheckpoint) { b.put(bundleLine{BundleCheckpoint: &c}) }

// Flush writes what is buffered and returns the first error.
func (b *BundleWriter) Flush() error {
	if b.err != nil {
		return b.err
	}
	return b.bw.Flush()
}

// bundleLine is any line but the header.
type bundleLine struct {
	*BundleEvent
	*BundleCheckpoint
}

// Export writes an audit bundle of the ledger as this node's bus serves
// it, with the node's keyring and witnesses in the header (see Export).
func (a *Auditor) Export(ctx context.Context, w io.Writer) error {
	var trusted string
	if a.cfg.Keyring != nil {
		trusted = string(a.cfg.Keyring.Marshal())
	}
	return Export(ctx, a.cfg.JS, w, ExportOptions{Origin: a.cfg.Origin, TrustedSigners: trusted, Witnesses: a.cfg.WitnessesText, Now: a.cfg.Now})
}

// ExportOptions configure Export.
type ExportOptions struct {
	// Origin selects the checkpoints of this log (default DefaultOrigin).
	Origin string
	// TrustedSigners and Witnesses go into the header as they are.
	TrustedSigners, Witnesses string
	Now                       func() time.Time
}

// Export writes an audit bundle straight from JetStream: every event of
// KEYS as stored now, then every checkpoint of AUDIT of the origin with
// the cosignatures published for it and the consistency proof, computed
// from the events written, from the checkpoint before it. It reads what
// the stream holds and checks nothing (a tampered stream gives a bundle
// that fails verification): an operator can export a ledger no node
// follows any more.
func Export(ctx context.Context, js jetstream.JetStream, w io.Writer, opts ExportOptions) error {
	if opts.Origin == "" {
		opts.Origin = DefaultOrigin
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	cps, err := readCheckpoints(ctx, js, opts.Origin)
	if err != nil {
		return err
	}
	stream, err := js.Stream(ctx, nats.KeysStream)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "KEYS stream is not available")
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return keyledger.Wrap(keyledger.Unavailable, err, "cannot read KEYS stream state")
	}
	last := info.State.LastSeq
	bw := NewBundleWriter(w)
	bw.Header(BundleHeader{Origin: opts.Origin, Size: int64(last), ExportedAt: opts.Now().UTC(),
		TrustedSigners: opts.TrustedSigners, Witnesses: opts.Witnesses})
	tree := &merkle.Tree{}
	if last > 0 {
		if err := exportEvents(ctx, stream, bw, last, tree); err != nil {
			return err
		}
	}
	var prev int64
	for _, c := range cps {
		bc := BundleCheckpoint{Checkpoint: c.note}
		if prev > 0 && c.size <= tree.Size() {
			p, err := tree.ProveConsistency(prev, c.size)
			if err != nil {
				return keyledger.Wrap(keyledger.Internal, err, "cannot prove consistency")
			}
			bc.ConsistencyFrom = prev
			bc.Consistency = hashes(p)
		}
		bw.Checkpoint(bc)
		prev = c.size
	}
	return bw.Flush()
}

// rawCheckpoint is a checkpoint of AUDIT with its cosignature lines.
type rawCheckpoint struct {
	size int64
	note string
}

// readCheckpoints reads AUDIT to its current end: every checkpoint of
// origin, by size (the first published of a size), with the cosignature
// lines published for that very text.
func readCheckpoints(ctx context.Context, js jetstream.JetStream, origin string) ([]rawCheckpoint, error) {
	stream, err := js.Stream(ctx, nats.AuditStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "AUDIT stream is not available")
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, keyledger.Wrap(keyledger.Unavailable, err, "cannot read AUDIT stream state")
	}
	byBody := map[string]*rawCheckpoint{}
	var out []*rawCheckpoint
	err = nats.ReadRange(ctx, stream, 1, info.State.LastSeq, func(_ uint64, subject string, data []byte) error {
		text, sigs, ok := splitNote(data)
		if !ok {
			return nil
		}
		cp, err := merkle.ParseBody(text)
		if err != nil || cp.Origin != origin {
			return nil
		}
		switch {
		case subject == nats.CheckpointSubject:
			if byBody[text] == nil {
				c := &rawCheckpoint{size: cp.Size, note: string(data)}
				byBody[text] = c
				out = append(out, c)
			}
		case strings.HasPrefix(subject, nats.CosignSubjectPrefix):
			if c := byBody[text]; c != nil {
				c.note += strings.Join(sigs, "")
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].size < out[j].size })
	res := make([]rawCheckpoint, 0, len(out))
	for i, c := range out {
		if i > 0 && c.size == out[i-1].size {
			continue
		}
		res = append(res, *c)
	}
	return res, nil
}

// exportEvents writes events 1..to of KEYS, and hashes them into tree.
// A gap is exported as it is: the verifier reports it.
func exportEvents(ctx context.Context, stream jetstream.Stream, bw *BundleWriter, to uint64, tree *merkle.Tree) error {
	return nats.ReadRange(ctx, stream, 1, to, func(seq uint64, subject string, data []byte) error {
		if uint64(tree.Size())+1 == seq {
			if _, err := tree.Append(data); err != nil {
				return err
			}
		}
		bw.Event(BundleEvent{Seq: seq, Subject: subject, Data: data})
		return bw.err
	})
}

// ReadBundle reads a bundle: the header, then each event and checkpoint
// in order, handed to the callbacks.
func ReadBundle(r io.Reader, header func(BundleHeader) error, event func(BundleEvent) error, checkpoint func(BundleCheckpoint) error) error {
	dec := json.NewDecoder(bufio.NewReaderSize(r, 1<<16))
	var h BundleHeader
	if err := dec.Decode(&h); err != nil {
		return fmt.Errorf("not an audit bundle: %w", err)
	}
	if h.Format != BundleFormat {
		return fmt.Errorf("not an audit bundle of format %s (found %q)", BundleFormat, h.Format)
	}
	if err := header(h); err != nil {
		return err
	}
	for line := 2; ; line++ {
		var l bundleLine
		if err := dec.Decode(&l); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("bundle line %d: %w", line, err)
		}
		var err error
		switch {
		case l.BundleEvent != nil && l.BundleCheckpoint == nil:
			err = event(*l.BundleEvent)
		case l.BundleCheckpoint != nil && l.BundleEvent == nil:
			err = checkpoint(*l.BundleCheckpoint)
		default:
			err = fmt.Errorf("bundle line %d is neither an event nor a checkpoint", line)
		}
		if err != nil {
			return err
		}
	}
}

func hashes(p []tlog.Hash) []string {
	out := make([]string, len(p))
	for i, h := range p {
		out[i] = base64.StdEncoding.EncodeToString(h[:])
	}
	return out
}
