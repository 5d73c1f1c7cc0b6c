//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package safetensors

import (
	"fmt"
	"math"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// mapFile maps the first size bytes of f read-only.
func mapFile(f *os.File, size int64) (data []byte, mapped bool, err error) {
	if size > math.MaxInt {
		return nil, false, fmt.Errorf("%d bytes do not fit the address space", size)
	}
	data, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, false, err
	}
	return data, true, nil
}

func unmapFile(data []byte) error { return syscall.Munmap(data) }

// releasePages tells the kernel that the pages of data[lo:hi] (a mapping
// from mapFile) are not needed soon: they leave the process's resident set
// and are read again from the file (or the page cache) if touched. syscall
// has Madvise on Linux only; x/sys/unix has it on every system here.
func releasePages(data []byte, lo, hi int) error {
	page := os.Getpagesize()
	lo -= lo % page // the mapping starts on a page boundary
	if r := hi % page; r != 0 {
		hi = min(hi+page-r, len(data))
	}
	if lo >= hi {
		return nil
	}
	return unix.Madvise(data[lo:hi], unix.MADV_DONTNEED)
}
