//go:build !linux

package projector

import "os"

// mapFile returns the contents of the file at path, read into memory,
// and a function to call once they are no longer used (see the Linux
// version, which maps the file instead).
func mapFile(path string) ([]byte, func(), error) {
	b, err := os.ReadFile(path)
	return b, func() {}, err
}
