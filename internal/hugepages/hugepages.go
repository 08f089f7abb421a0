// Package hugepages asks the kernel to back large arrays that are read at
// random with huge pages: the verification table's, and the benchmark
// that measures what one access to such an array costs.
package hugepages
