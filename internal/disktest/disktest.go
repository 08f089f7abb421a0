// Package disktest gives tests a disk of their own to fill: a tmpfs of a
// given size (mounting needs root, which `make test` has here).
package disktest

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// MustTmpfs mounts a tmpfs of size (e.g. "96m") at a new directory and
// unmounts it when the test ends.
func MustTmpfs(tb testing.TB, size string) string {
	tb.Helper()
	dir := tb.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		tb.Fatalf("this test fills a disk of its own: mounting a %s tmpfs at %s needs root: %v %s", size, dir, err, out)
	}
	tb.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// Fill writes path until its disk is full (ENOSPC).
func Fill(tb testing.TB, path string) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				tb.Fatalf("filling the disk: %v", err)
			}
			f.Sync()
			return
		}
	}
}
