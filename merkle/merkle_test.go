package merkle

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func event(i int) []byte {
	return []byte(fmt.Sprintf(`{"type":"KeyCreated","v":1,"event_id":"%08d","key_id":"key_%d"}`, i, i))
}

func mustTree(tb testing.TB, n int) *Tree {
	tb.Helper()
	t := &Tree{}
	for i := range n {
		if idx, err := t.Append(event(i)); err != nil || idx != int64(i) {
			tb.Fatalf("append %d: %d %v", i, idx, err)
		}
	}
	return t
}

// independentRoot computes the RFC 6962 root straight from the leaves'
// record hashes, without the tree's stored hashes.
func independentRoot(leaves [][]byte) tlog.Hash {
	if len(leaves) == 1 {
		return tlog.RecordHash(leaves[0])
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	return tlog.NodeHash(independentRoot(leaves[:k]), independentRoot(leaves[k:]))
}

func TestTree(t *testing.T) {
	const n = 10_000
	tr := mustTree(t, n)
	var leaves [][]byte
	for i := range n {
		leaves = append(leaves, event(i))
	}
	for _, size := range []int64{1, 2, 3, 7, 8, 1000, 4097, n} {
		got, err := tr.Root(size)
		if err != nil || got != independentRoot(leaves[:size]) {
			t.Fatalf("root of %d: %v, %v", size, got, err)
		}
	}
	root, _ := tr.Root(n)
	t.Run("the stored hashes are tlog's", func(t *testing.T) {
		// AppendHash computes them from its frontier; tlog from
		// whatever the reader gives it.
		var want tlog.HashReaderFunc
		var ref []tlog.Hash
		want = func(idx []int64) ([]tlog.Hash, error) {
			out := make([]tlog.Hash, len(idx))
			for i, x := range idx {
				out[i] = ref[x]
			}
			return out, nil
		}
		for i := range int64(n) {
			hs, err := tlog.StoredHashes(i, leaves[i], want)
			if err != nil {
				t.Fatal(err)
			}
			ref = append(ref, hs...)
		}
		idx := make([]int64, len(ref))
		for i := range idx {
			idx[i] = int64(i)
		}
		got, err := hashReader{tr}.ReadHashes(idx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range ref {
			if got[i] != ref[i] {
				t.Fatalf("stored hash %d of %d differs from tlog's", i, len(ref))
			}
		}
	})
	t.Run("every leaf's inclusion proof verifies, and fails for a modified leaf", func(t *testing.T) {
		for i := int64(0); i < n; i++ {
			p, err := tr.ProveLeaf(n, i)
			if err != nil {
				t.Fatal(err)
			}
			if err := CheckLeaf(p, n, root, i, leaves[i]); err != nil {
				t.Fatalf("leaf %d: %v", i, err)
			}
			if i%97 == 0 {
				bad := bytes.Replace(leaves[i], []byte("KeyCreated"), []byte("KeyRevoked"), 1)
				if CheckLeaf(p, n, root, i, bad) == nil {
					t.Fatalf("a modified leaf %d verified", i)
				}
			}
		}
	})
	t.Run("consistency verifies, and fails if an earlier leaf changed", func(t *testing.T) {
		for _, c := range [][2]int64{{1, n}, {100, 5000}, {4096, 4097}, {n, n}} {
			p, err := tr.ProveConsistency(c[0], c[1])
			if err != nil {
				t.Fatal(err)
			}
			rn, _ := tr.Root(c[0])
			rm, _ := tr.Root(c[1])
			if err := CheckConsistency(p, c[1], rm, c[0], rn); err != nil {
				t.Fatalf("%v: %v", c, err)
			}
		}
		// A history with leaf 50 rewritten: its old checkpoint of 100
		// leaves is not a prefix of the new tree.
		forged := &Tree{}
		for i := range 200 {
			e := event(i)
			if i == 50 {
				e = []byte("rewritten")
			}
			forged.Append(e)
		}
		p, _ := forged.ProveConsistency(100, 200)
		rOld, _ := tr.Root(100)
		rNew, _ := forged.Root(200)
		if CheckConsistency(p, 200, rNew, 100, rOld) == nil {
			t.Fatal("a rewritten history proved consistent with the old checkpoint")
		}
	})
	if _, err := tr.ProveLeaf(n, n); err == nil {
		t.Error("a proof for a leaf past the tree")
	}
}

func TestOpenFile(t *testing.T) {
	const n = 5000
	mem := mustTree(t, n)
	path := filepath.Join(t.TempDir(), "tree")
	f, err := OpenFile(path)
	if err != nil || f.Size() != 0 {
		t.Fatalf("new file: %v, %d leaves", err, f.Size())
	}
	for i := range n {
		f.Append(event(i))
	}
	same := func(t *testing.T, f *Tree, size int64) {
		t.Helper()
		if f.Size() != size {
			t.Fatalf("size %d, want %d", f.Size(), size)
		}
		for _, k := range []int64{1, 2, 1000, 2049, size} {
			if k > size {
				continue
			}
			want, _ := mem.Root(k)
			if got, err := f.Root(k); err != nil || got != want {
				t.Fatalf("root %d: %v %v", k, got, err)
			}
		}
		for _, i := range []int64{0, 1, size / 2, size - 1} {
			p, err := f.ProveLeaf(size, i)
			root, _ := mem.Root(size)
			if err != nil || CheckLeaf(p, size, root, i, event(int(i))) != nil {
				t.Fatalf("leaf %d of %d: %v", i, size, err)
			}
		}
	}
	t.Run("a file tree is the memory tree", func(t *testing.T) { same(t, f, n) })
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Run("reopened, it goes on growing", func(t *testing.T) {
		f, err := OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		same(t, f, n)
		g := mustTree(t, n+10)
		for i := n; i < n+10; i++ {
			f.Append(event(i))
		}
		want, _ := g.Root(n + 10)
		if got, _ := f.Root(n + 10); got != want {
			t.Fatal("root after appending to a reopened tree")
		}
		if err := f.Truncate(n); err != nil {
			t.Fatal(err)
		}
		same(t, f, n)
		f.Close()
	})
	t.Run("a file cut short opens at its last whole leaf", func(t *testing.T) {
		st, _ := os.Stat(path)
		if err := os.Truncate(path, st.Size()-tlog.HashSize-7); err != nil {
			t.Fatal(err)
		}
		f, err := OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if f.Size() >= n || f.Size() < n-2 {
			t.Fatalf("size %d after cutting a few hashes off %d leaves", f.Size(), n)
		}
		same(t, f, f.Size())
	})
	t.Run("a write that fails loses nothing and is retried", func(t *testing.T) {
		f, err := OpenFile(filepath.Join(t.TempDir(), "tree"))
		if err != nil {
			t.Fatal(err)
		}
		// As on a full disk: every write fails until the file is back.
		good := f.f
		bad, _ := os.Open(os.DevNull)
		f.f = bad
		for i := range 2 * flushAt {
			if _, err := f.Append(event(i)); err != nil {
				t.Fatalf("append %d failed with the disk full: %v", i, err)
			}
		}
		if f.Sync() == nil {
			t.Fatal("Sync did not report the failed writes")
		}
		f.f = good
		for i := 2 * flushAt; i < n; i++ {
			f.Append(event(i))
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		same(t, f, n)
		f.Close()
		g, err := OpenFile(good.Name())
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		same(t, g, n)
	})
	t.Run("a memory tree truncates too", func(t *testing.T) {
		m := mustTree(t, 300)
		if err := m.Truncate(77); err != nil {
			t.Fatal(err)
		}
		for i := 77; i < n; i++ {
			m.Append(event(i))
		}
		same(t, m, n)
	})
}

func TestCheckpoint(t *testing.T) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "n1")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	cskey, cvkey, _ := note.GenerateKey(rand.Reader, "n2")
	cs, _ := note.NewSigner(cskey)
	cv, _ := note.NewVerifier(cvkey)
	tr := mustTree(t, 10)
	root, _ := tr.Root(10)
	c := Checkpoint{Origin: "keyledger/KEYS", Size: 10, Root: root}
	msg, err := c.Sign(s, cs)
	if err != nil {
		t.Fatal(err)
	}
	got, names, err := Open(msg, note.VerifierList(v, cv))
	if err != nil || got != c || len(names) != 2 || names[0] != "n1" || names[1] != "n2" {
		t.Fatalf("open: %+v %v %v", got, names, err)
	}
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"attack: size changed", bytes.Replace(msg, []byte("\n10\n"), []byte("\n11\n"), 1)},
		{"attack: signed by an unknown key", func() []byte {
			k, _, _ := note.GenerateKey(rand.Reader, "n1")
			o, _ := note.NewSigner(k)
			m, _ := c.Sign(o)
			return m
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := Open(tc.msg, note.VerifierList(v, cv)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func BenchmarkAppend(b *testing.B) {
	e := event(1)
	tr := &Tree{}
	b.ReportAllocs()
	for b.Loop() {
		tr.Append(e)
	}
}

func BenchmarkAppendFile(b *testing.B) {
	e := event(1)
	tr, err := OpenFile(filepath.Join(b.TempDir(), "tree"))
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	b.ReportAllocs()
	for b.Loop() {
		tr.Append(e)
	}
}

func BenchmarkProveLeaf(b *testing.B) {
	tr := mustTree(b, 1<<20)
	n := tr.Size()
	b.ReportAllocs()
	i := int64(0)
	for b.Loop() {
		if _, err := tr.ProveLeaf(n, i%n); err != nil {
			b.Fatal(err)
		}
		i += 7919
	}
}

func TestParseBody(t *testing.T) {
	root := base64.StdEncoding.EncodeToString(make([]byte, 32))
	ring := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"minimal", "keyledger/KEYS\n12\n" + root + "\n", true},
		{"with time", "keyledger/KEYS\n12\n" + root + "\ntime 2026-12-01T17:00:00Z\n", true},
		{"no final newline", "keyledger/KEYS\n12\n" + root, false},
		{"empty origin", "\n12\n" + root + "\n", false},
		{"negative size", "keyledger/KEYS\n-1\n" + root + "\n", false},
		{"size with a plus", "keyledger/KEYS\n+12\n" + root + "\n", false},
		{"size with a leading zero", "keyledger/KEYS\n012\n" + root + "\n", false},
		{"short root", "keyledger/KEYS\n12\nAAAA\n", false},
		{"root not base64", "keyledger/KEYS\n12\n!!!!\n", false},
		{"bad time", "keyledger/KEYS\n12\n" + root + "\ntime yesterday\n", false},
		{"unknown extension line", "keyledger/KEYS\n12\n" + root + "\nsomething else\n", false},
		{"time not in UTC", "keyledger/KEYS\n12\n" + root + "\ntime 2026-12-01T18:00:00+01:00\n", false},
		{"verified, none refused", "keyledger/KEYS\n12\n" + root + "\ntime 2026-12-01T17:00:00Z\nkeyring " + ring + "\nrefused none\n", true},
		{"verified, two refused", "keyledger/KEYS\n12\n" + root + "\nkeyring " + ring + "\nrefused 3,12\n", true},
		{"refused beyond the tree", "keyledger/KEYS\n12\n" + root + "\nkeyring " + ring + "\nrefused 13\n", false},
		{"refused out of order", "keyledger/KEYS\n12\n" + root + "\nkeyring " + ring + "\nrefused 5,3\n", false},
		{"refused twice", "keyledger/KEYS\n12\n" + root + "\nkeyring " + ring + "\nrefused 3,3\n", false},
		{"refused 0", "keyledger/KEYS\n12\n" + root + "\nkeyring " + ring + "\nrefused 0\n", false},
		{"refused empty", "keyledger/KEYS\n12\n" + root + "\nkeyring " + ring + "\nrefused \n", false},
		{"refused without keyring", "keyledger/KEYS\n12\n" + root + "\nrefused none\n", false},
		{"keyring without refused", "keyledger/KEYS\n12\n" + root + "\nkeyring " + ring + "\n", false},
		{"keyring twice", "keyledger/KEYS\n12\n" + root + "\nkeyring " + ring + "\nkeyring " + ring + "\nrefused none\n", false},
		{"short keyring", "keyledger/KEYS\n12\n" + root + "\nkeyring abcd\nrefused none\n", false},
		{"upper-case keyring", "keyledger/KEYS\n12\n" + root + "\nkeyring " + strings.ToUpper(ring) + "\nrefused none\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseBody(tc.text)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseBody: %+v, %v", c, err)
			}
			if err == nil && c.Body() != tc.text {
				t.Fatalf("Body %q, parsed from %q", c.Body(), tc.text)
			}
		})
	}
}

// FuzzParseBody: checkpoint texts come from the bus and from auditors'
// files. A text either fails to parse or is exactly what Body writes.
func FuzzParseBody(f *testing.F) {
	f.Add("keyledger/KEYS\n12\n" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\ntime 2026-12-01T17:00:00Z\n")
	f.Add("x\n0\n\n")
	f.Add("keyledger/KEYS\n12\n" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\nkeyring " + strings.Repeat("0", 64) + "\nrefused 1,2\n")
	f.Fuzz(func(t *testing.T, text string) {
		c, err := ParseBody(text)
		if err == nil && c.Body() != text {
			t.Fatalf("parsed %q, which writes back as %q", text, c.Body())
		}
	})
}
