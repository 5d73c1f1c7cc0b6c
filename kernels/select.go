package kernels

import (
	"errors"
	"fmt"
	"os"
)

// DeviceEnv is the environment variable that chooses the device when no
// flag does: auto, cpu or cuda.
const DeviceEnv = "RANKZIP_DEVICE"

var errNoCUDABuild = errors.New("kernels: this binary was built without CUDA; build it with `-tags cuda` (see the README's GPU section)")

// Select returns the backend for a --device value: "auto" (or "") the
// fastest that runs here, "cpu" the CPU one, "cuda" the GPU one or an error
// saying why there is none, never a silent CPU run. An empty device reads
// $RANKZIP_DEVICE first.
func Select(device string) (Backend, error) {
	if device == "" {
		device = os.Getenv(DeviceEnv)
	}
	switch device {
	case "", "auto":
		return Default(), nil
	case "cpu":
		return cpuDefault(), nil
	case "cuda":
		b, err := cudaBackend()
		if err != nil {
			return nil, fmt.Errorf("device cuda: %w", err)
		}
		return b, nil
	default:
		return nil, fmt.Errorf("device %q: want auto, cpu or cuda", device)
	}
}

// Describe names a backend for reports and logs: "openblas", or for the
// GPU "cuda: NVIDIA H200 (150 GB, driver 13000)".
func Describe(b Backend) string {
	if d, ok := b.(interface{ Device() string }); ok {
		return b.Name() + ": " + d.Device()
	}
	return b.Name()
}
