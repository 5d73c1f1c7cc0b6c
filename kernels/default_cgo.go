//go:build cgo && !cuda

package kernels

// Default returns the fastest backend built in: OpenBLAS, since cgo is on.
func Default() Backend { return OpenBLAS{} }

// Available lists every backend built in, fastest first, for tests and
// benchmarks that must cover them all.
func Available() []Backend { return []Backend{OpenBLAS{}, Gonum{}} }

func cpuDefault() Backend { return OpenBLAS{} }

func cudaBackend() (Backend, error) { return nil, errNoCUDABuild }
