// Package scan finds keyledger keys in files: the strings that carry a
// configured product prefix, an environment and a valid checksum. The
// checksum is what makes a find trustworthy: a look-alike (a truncated
// key, an example, a hash that happens to match the pattern) fails it, so
// a pre-commit hook built on this has almost no false positives.
package scan

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	keyledger "github.com/keyledger/keyledger"
)

// Finding is one key found. Secret is the whole key: print Hint unless the
// user asked to see it.
type Finding struct {
	Path        string                `json:"path"`
	Line        int                   `json:"line"`
	Column      int                   `json:"column"`
	Environment keyledger.Environment `json:"environment"`
	Hint        string                `json:"hint"`
	Secret      string                `json:"-"`
}

// Scanner finds the keys of some formats.
type Scanner struct {
	formats []keyledger.Format
	// needles are "<prefix>_" for every format: the cheap first test.
	needles [][]byte
	// Binary, when set, scans files holding NUL bytes too (skipped by
	// default: build outputs and images).
	Binary bool
}

// New returns a scanner for keys of these product prefixes (e.g. "fsk").
func New(prefixes ...string) (*Scanner, error) {
	if len(prefixes) == 0 {
		return nil, errors.New("scan: no prefix to look for")
	}
	s := &Scanner{}
	for _, p := range prefixes {
		f, err := keyledger.NewFormat(p)
		if err != nil {
			return nil, err
		}
		s.formats = append(s.formats, f)
		s.needles = append(s.needles, []byte(p+"_"))
	}
	return s, nil
}

// Reader scans r, naming it name in findings, and calls found for each
// key in order.
func (s *Scanner) Reader(r io.Reader, name string, found func(Finding)) error {
	// A line longer than the buffer is scanned in pieces that overlap by
	// a key's length, so no key is missed at a cut, none is reported
	// twice, and none is cut short.
	const overlap = keyledger.MaxRandomLen + 64
	br := bufio.NewReaderSize(r, 64<<10)
	line := 0
	for {
		b, err := br.ReadSlice('\n')
		if len(b) == 0 && err == io.EOF {
			return nil
		}
		line++
		partial := errors.Is(err, bufio.ErrBufferFull)
		s.line(b, name, line, 0, 0, partial, found)
		base := 0 // where b starts in the line
		for partial {
			keep := append([]byte(nil), b[max(0, len(b)-overlap):]...)
			base += len(b) - len(keep)
			b, err = br.ReadSlice('\n')
			partial = errors.Is(err, bufio.ErrBufferFull)
			chunk := append(keep, b...)
			s.line(chunk, name, line, base, len(keep), partial, found)
			b = chunk
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// line finds the keys of one line, or of a piece of one that starts at
// column base+1: only keys ending past minEnd (what an earlier piece did
// not hold whole), and, when partial (the line goes on), none that reach
// the piece's end.
func (s *Scanner) line(b []byte, name string, line, base, minEnd int, partial bool, found func(Finding)) {
	for fi, needle := range s.needles {
		rest, off := b, 0
		for {
			i := bytes.Index(rest, needle)
			if i < 0 {
				break
			}
			start := off + i
			// The prefix must start a token: "xfsk_live_…" is another
			// product's key.
			if start > 0 && isTokenByte(b[start-1]) {
				off, rest = start+len(needle), b[start+len(needle):]
				continue
			}
			end := start + len(needle)
			for end < len(b) && isTokenByte(b[end]) {
				end++
			}
			cand := string(b[start:end])
			if end > minEnd && !(partial && end == len(b)) {
				if env, ok := s.formats[fi].Parse(cand); ok {
					found(Finding{Path: name, Line: line, Column: base + start + 1, Environment: env, Hint: keyledger.Hint(cand), Secret: cand})
				}
			}
			off, rest = end, b[end:]
		}
	}
}

// isTokenByte: the characters of a key (base62 and '_').
func isTokenByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

// Path scans a file, or a directory tree (skipping .git and, unless
// Binary, files with NUL bytes in their first 8 KiB). Errors on single
// files are reported to skipped and the walk goes on.
func (s *Scanner) Path(root string, found func(Finding), skipped func(path string, err error)) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			skipped(path, err)
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if d.Name() == ".git" && path != root {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if err := s.file(path, found); err != nil {
			skipped(path, err)
		}
		return nil
	})
}

func (s *Scanner) file(path string, found func(Finding)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	if !s.Binary {
		head, _ := br.Peek(8 << 10)
		if bytes.IndexByte(head, 0) >= 0 {
			return nil
		}
	}
	return s.Reader(br, filepath.ToSlash(path), found)
}
