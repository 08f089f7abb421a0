package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	keyledger "github.com/keyledger/keyledger"
)

// keyledger scan: exit 1 with file:line and the hint (never the secret)
// when a key is found, 0 on a clean tree; --json for scripts.
func TestScanCmd(t *testing.T) {
	f, _ := keyledger.NewFormat("fsk")
	key, _ := f.New(keyledger.EnvLive, rand.NewChaCha8([32]byte{'c'}))
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "clean.txt"), []byte("nothing here: fsk_live_short\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "src"), 0o755)
	os.WriteFile(filepath.Join(dir, "src", "config.go"), []byte("package x\n\nconst k = \""+key+"\"\n"), 0o644)
	ctx := context.Background()
	scanRun := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(ctx, append([]string{"scan"}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, _ := scanRun(filepath.Join(dir, "clean.txt"))
	if code != 0 || out != "" {
		t.Fatalf("clean file: exit %d, %q", code, out)
	}
	code, out, errs := scanRun(dir)
	want := filepath.ToSlash(filepath.Join(dir, "src", "config.go")) + ":3:12: live key …" + keyledger.Hint(key) + "\n"
	if code != 1 || out != want || strings.Contains(out+errs, key) {
		t.Fatalf("tree: exit %d\n got %q\nwant %q", code, out, want)
	}
	code, out, _ = scanRun("--json", dir)
	var js struct {
		Findings []struct {
			Line   int    `json:"line"`
			Hint   string `json:"hint"`
			Secret string `json:"secret"`
		} `json:"findings"`
	}
	if code != 1 || json.Unmarshal([]byte(out), &js) != nil || len(js.Findings) != 1 || js.Findings[0].Secret != "" || js.Findings[0].Line != 3 {
		t.Fatalf("--json: exit %d %s", code, out)
	}
	if code, out, _ = scanRun("--show", dir); code != 1 || !strings.Contains(out, key) {
		t.Fatalf("--show: exit %d %q", code, out)
	}
}
