//go:build cgo && cuda

package kernels

// Default returns the fastest backend built in: CUDA when a device answers,
// else OpenBLAS.
func Default() Backend {
	if c, err := OpenCUDA(); err == nil {
		return c
	}
	return OpenBLAS{}
}

// Available lists every backend built in that can run here, fastest first,
// for tests and benchmarks that must cover them all: CUDA only where a
// device answers.
func Available() []Backend {
	if c, err := OpenCUDA(); err == nil {
		return []Backend{c, OpenBLAS{}, Gonum{}}
	}
	return []Backend{OpenBLAS{}, Gonum{}}
}

func cpuDefault() Backend { return OpenBLAS{} }

func cudaBackend() (Backend, error) { return OpenCUDA() }
