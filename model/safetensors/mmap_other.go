//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package safetensors

import (
	"fmt"
	"math"
	"os"
)

// mapFile reads the first size bytes of f into memory (no mmap here).
func mapFile(f *os.File, size int64) (data []byte, mapped bool, err error) {
	if size > math.MaxInt {
		return nil, false, fmt.Errorf("%d bytes do not fit the address space", size)
	}
	data = make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil { // io.EOF: the file shrank
		return nil, false, err
	}
	return data, false, nil
}

func unmapFile([]byte) error { return nil }

// releasePages does nothing: without a mapping, data is the process's own
// copy of the file.
func releasePages([]byte, int, int) error { return nil }
