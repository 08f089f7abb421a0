package projector

import (
	"os"
	"syscall"
)

// mapFile returns the contents of the file at path, mapped read-only,
// and the function that unmaps them: nothing may refer to the bytes
// after it ran. A snapshot is read once, front to back, and is mostly
// in the page cache (the node wrote it, or just downloaded it): mapping
// it costs no copy and no fresh memory, where reading it into a buffer
// made the kernel fault in and zero the buffer's every page first (2.2
// of the 6 s a ten-million-key load took, see README).
//
// Snapshots are replaced by rename and removed by unlink, never
// truncated in place, so the mapping cannot shrink under the load.
func mapFile(path string) ([]byte, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	size := fi.Size()
	if size == 0 || int64(int(size)) != size {
		// Nothing to map (mmap refuses a length of 0): the caller
		// refuses it as not a snapshot.
		return nil, func() {}, nil
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_PRIVATE|syscall.MAP_POPULATE)
	if err != nil {
		// A file system that cannot map: read it.
		b, err := os.ReadFile(path)
		return b, func() {}, err
	}
	_ = syscall.Madvise(b, syscall.MADV_SEQUENTIAL)
	return b, func() { _ = syscall.Munmap(b) }, nil
}
