//go:build !cgo

package kernels

// Default returns the fastest backend built in: Gonum, since cgo is off.
func Default() Backend { return Gonum{} }

// Available lists every backend built in, fastest first, for tests and
// benchmarks that must cover them all.
func Available() []Backend { return []Backend{Gonum{}} }

func cpuDefault() Backend { return Gonum{} }

func cudaBackend() (Backend, error) { return nil, errNoCUDABuild }
