//go:build unix

package calib

import (
	"os"
	"syscall"
	"unsafe"
)

func mapFloats(f *os.File, n int) ([]float32, error) {
	if n == 0 {
		return []float32{}, nil
	}
	if err := f.Truncate(int64(4 * n)); err != nil {
		return nil, err
	}
	b, err := syscall.Mmap(int(f.Fd()), 0, 4*n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n), nil
}

func unmapFloats(x []float32) {
	if len(x) == 0 {
		return
	}
	syscall.Munmap(unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x)))
}
