package scan

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

func mustKey(tb testing.TB, f keyledger.Format, env keyledger.Environment, seed uint64) string {
	tb.Helper()
	k, err := f.New(env, rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 's'}))
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// lookAlike is k with its checksum broken.
func lookAlike(k string) string {
	b := []byte(k)
	if b[len(b)-1] == 'A' {
		b[len(b)-1] = 'B'
	} else {
		b[len(b)-1] = 'A'
	}
	return string(b)
}

func findAll(t *testing.T, s *Scanner, text string) []Finding {
	t.Helper()
	var out []Finding
	if err := s.Reader(strings.NewReader(text), "x", func(f Finding) { out = append(out, f) }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReader(t *testing.T) {
	f, _ := keyledger.NewFormat("fsk")
	live, test := mustKey(t, f, keyledger.EnvLive, 1), mustKey(t, f, keyledger.EnvTest, 2)
	other, _ := keyledger.NewFormat("acme")
	foreign := mustKey(t, other, keyledger.EnvLive, 3)
	s, err := New("fsk")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		text string
		want []string // "line:col:hint"
	}{
		{"one live key", "token = " + live + "\n", []string{"1:9:" + keyledger.Hint(live)}},
		{"test key in quotes, second line", "a\nKEY=\"" + test + "\"", []string{"2:6:" + keyledger.Hint(test)}},
		{"two on a line", live + " " + test, []string{"1:1:" + keyledger.Hint(live), fmt.Sprintf("1:%d:%s", len(live)+2, keyledger.Hint(test))}},
		{"checksum look-alike", "k=" + lookAlike(live), nil},
		{"truncated", "k=" + live[:len(live)-3], nil},
		{"prefix glued to another word", "xfsk" + live[3:], nil},
		{"longer token", live + "abc", nil},
		{"another product's prefix", foreign, nil},
		{"empty", "", nil},
		{"no newline at the end", live, []string{"1:1:" + keyledger.Hint(live)}},
		{"CRLF", "x\r\n" + live + "\r\n", []string{"2:1:" + keyledger.Hint(live)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, f := range findAll(t, s, tc.text) {
				got = append(got, fmt.Sprintf("%d:%d:%s", f.Line, f.Column, f.Hint))
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("keys at every offset around the buffer's edge, once each, at their column", func(t *testing.T) {
		for pad := (64 << 10) - len(live) - 70; pad <= (64<<10)+10; pad += 7 {
			text := strings.Repeat("x", pad) + " " + live + " " + strings.Repeat("y", 70<<10)
			got := findAll(t, s, text)
			if len(got) != 1 || got[0].Secret != live || got[0].Column != pad+2 {
				t.Fatalf("pad %d: %+v", pad, got)
			}
		}
	})
	t.Run("a key past a line longer than the buffer", func(t *testing.T) {
		text := strings.Repeat("x", 200<<10) + " " + live + strings.Repeat(" y", 1000) + "\n" + test
		got := findAll(t, s, text)
		if len(got) != 2 || got[0].Secret != live || got[1].Secret != test || got[1].Line != 2 {
			t.Fatalf("got %+v", got)
		}
	})
}

// A generated tree with seeded keys among look-alikes: every seeded key
// is found where it was put, no look-alike is, binary files and .git are
// skipped.
func TestPath(t *testing.T) {
	f, _ := keyledger.NewFormat("fsk")
	dir := t.TempDir()
	want := map[string]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 40 {
		sub := filepath.Join(dir, fmt.Sprintf("pkg%d", i%5))
		os.MkdirAll(sub, 0o755)
		var b bytes.Buffer
		for l := 1; l <= 50; l++ {
			switch {
			case rng.IntN(20) == 0:
				k := mustKey(t, f, keyledger.EnvLive, uint64(i*100+l))
				fmt.Fprintf(&b, "const key = %q // seeded\n", k)
				want[fmt.Sprintf("%s:%d", filepath.ToSlash(filepath.Join(sub, fmt.Sprintf("f%d.go", i))), l)] = true
			case rng.IntN(10) == 0:
				fmt.Fprintf(&b, "const nope = %q\n", lookAlike(mustKey(t, f, keyledger.EnvTest, uint64(i*100+l+5000))))
			default:
				fmt.Fprintf(&b, "line %d of file %d: nothing to see, fsk_ fsk_live_ fsk_test_short\n", l, i)
			}
		}
		os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%d.go", i)), b.Bytes(), 0o644)
	}
	hidden := mustKey(t, f, keyledger.EnvLive, 99999)
	os.MkdirAll(filepath.Join(dir, ".git"), 0o755)
	os.WriteFile(filepath.Join(dir, ".git", "config"), []byte(hidden), 0o644)
	os.WriteFile(filepath.Join(dir, "image.bin"), append([]byte{0, 1, 2}, hidden...), 0o644)

	s, _ := New("fsk")
	got := map[string]bool{}
	err := s.Path(dir, func(fd Finding) { got[fmt.Sprintf("%s:%d", fd.Path, fd.Line)] = true },
		func(p string, err error) { t.Errorf("skipped %s: %v", p, err) })
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("found %d, want %d:\n got %v\nwant %v", len(got), len(want), got, want)
	}
	s.Binary = true
	n := 0
	s.Path(filepath.Join(dir, "image.bin"), func(Finding) { n++ }, func(string, error) {})
	if n != 1 {
		t.Fatalf("with Binary, the binary file's key: found %d", n)
	}
}

func FuzzReader(f *testing.F) {
	format, _ := keyledger.NewFormat("fsk")
	k := mustKey(f, format, keyledger.EnvLive, 7)
	f.Add([]byte(k))
	f.Add([]byte("fsk_live_" + strings.Repeat("a", 40)))
	f.Add([]byte("xx fsk_test_\n" + k + "\r\n"))
	s, _ := New("fsk")
	f.Fuzz(func(t *testing.T, b []byte) {
		s.Reader(bytes.NewReader(b), "f", func(fd Finding) {
			if _, ok := format.Parse(fd.Secret); !ok || !bytes.Contains(b, []byte(fd.Secret)) {
				t.Fatalf("finding %q is not a valid key of the input", fd.Secret)
			}
		})
	})
}

// BenchmarkPath scans a 100 MB tree (1,000 files of 100 KB of source-like
// text, a key every few hundred lines): MB/s is the figure.
func BenchmarkPath(b *testing.B) {
	f, _ := keyledger.NewFormat("fsk")
	dir := b.TempDir()
	line := []byte("\tif err := client.Do(ctx, \"fsk_test_\" + name, opts...); err != nil { return fmt.Errorf(\"x: %w\", err) }\n")
	var total int64
	for i := range 1000 {
		var buf bytes.Buffer
		for buf.Len() < 100<<10 {
			buf.Write(line)
			if buf.Len()%40000 < len(line) {
				fmt.Fprintf(&buf, "key := %q\n", mustKey(b, f, keyledger.EnvLive, uint64(i)))
			}
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d.go", i)), buf.Bytes(), 0o644)
		total += int64(buf.Len())
	}
	s, _ := New("fsk")
	b.SetBytes(total)
	b.ResetTimer()
	for range b.N {
		n := 0
		s.Path(dir, func(Finding) { n++ }, func(string, error) {})
		if n == 0 {
			b.Fatal("no key found")
		}
	}
}
