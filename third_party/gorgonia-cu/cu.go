// Package cu provides an idiomatic interface to the CUDA Driver API.
package cu // import "gorgonia.org/cu"

// This file implements CUDA driver context management

//#include <cuda.h>
import "C"
import (
	"fmt"
)

const initHtml = "https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__INITIALIZE.html"

// initErr is what cuInit returned when the package was loaded.
var initErr error

func init() {
	// Given that the flags must be 0, the CUDA driver is initialized at the package level
	// http://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__INITIALIZE.html
	//
	// rankzip patch: a machine without a usable device must not end the
	// process (a program may fall back to the CPU); the error is kept for
	// InitError instead of printed before os.Exit(1).
	if err := result(C.cuInit(C.uint(0))); err != nil {
		initErr = fmt.Errorf("cuInit: %v (see %s)", err, initHtml)
	}
}

// InitError returns the error of the driver's initialisation when the
// package was loaded, or nil when the driver is usable.
func InitError() error { return initErr }

// Version returns the version of the CUDA driver
func Version() int {
	var v C.int
	if err := result(C.cuDriverGetVersion(&v)); err != nil {
		return -1
	}
	return int(v)
}
