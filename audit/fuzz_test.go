package audit_test

import (
	"bytes"
	"testing"

	"github.com/keyledger/keyledger/audit"
	"github.com/keyledger/keyledger/events/eventstest"
	"github.com/keyledger/keyledger/merkle"
	"github.com/keyledger/keyledger/nats"
)

// FuzzVerify: a bundle is an auditor's file, from anywhere. Whatever its
// bytes, Verify answers (an error or a report) and never panics; a
// report that says OK has checked at least what it claims.
func FuzzVerify(f *testing.F) {
	signer := eventstest.MustSigner(f, "n1", 1)
	ring := mustRing(f, signer.VerifierKey)
	ids := eventstest.NewIDs(7)
	var b bytes.Buffer
	w := audit.NewBundleWriter(&b)
	w.Header(audit.BundleHeader{Origin: audit.DefaultOrigin, Size: 2})
	tree := &merkle.Tree{}
	for i, id := range []string{"key_a", "key_b"} {
		data := signer.MustSeal(f, eventstest.Created(f, ids, id))
		tree.Append(data)
		w.Event(audit.BundleEvent{Seq: uint64(i + 1), Subject: nats.KeySubject(id), Data: data})
	}
	root, _ := tree.Root(2)
	note, _ := merkle.Checkpoint{Origin: audit.DefaultOrigin, Size: 2, Root: root}.Sign(signer.NoteSigner())
	w.Checkpoint(audit.BundleCheckpoint{Checkpoint: string(note)})
	w.Flush()
	f.Add(b.Bytes())
	f.Add([]byte(`{"keyledger_audit_bundle":"v1"}` + "\n" + `{"seq":1,"checkpoint":"x"}` + "\n"))
	f.Add([]byte(`{"keyledger_audit_bundle":"v1"}` + "\n" + `{"seq":5,"subject":"keyledger.keys.k","data":"AAAA"}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := audit.Verify(bytes.NewReader(data), audit.VerifyOptions{Keyring: ring, Since: note})
		if err != nil {
			return
		}
		if rep.OK && (rep.Since == nil || !rep.Since.OK || rep.Events < 2) {
			t.Fatalf("OK without the saved checkpoint extended: %+v", rep)
		}
	})
}
