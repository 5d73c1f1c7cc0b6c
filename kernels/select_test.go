//go:build !cuda

package kernels_test

import (
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
)

// Without the cuda tag, asking for the GPU is an error that says how to get
// one, never a silent CPU run; auto and cpu give the default CPU backend.
func TestSelectWithoutCUDA(t *testing.T) {
	t.Setenv(kernels.DeviceEnv, "")
	for _, dev := range []string{"", "auto", "cpu"} {
		b, err := kernels.Select(dev)
		if err != nil || b.Name() != kernels.Default().Name() {
			t.Errorf("Select(%q) = %v, %v; want %s", dev, b, err, kernels.Default().Name())
		}
	}
	_, err := kernels.Select("cuda")
	if err == nil || !strings.Contains(err.Error(), "built without CUDA") || !strings.Contains(err.Error(), "-tags cuda") {
		t.Errorf("Select(cuda) error = %v, want one saying the binary lacks CUDA and how to build it", err)
	}
	if _, err := kernels.Select("tpu"); err == nil || !strings.Contains(err.Error(), "auto, cpu or cuda") {
		t.Errorf("Select(tpu) error = %v", err)
	}
	t.Setenv(kernels.DeviceEnv, "cuda")
	if _, err := kernels.Select(""); err == nil {
		t.Errorf("Select(\"\") with %s=cuda gave no error", kernels.DeviceEnv)
	}
	if got := kernels.Describe(kernels.Gonum{}); got != "gonum" {
		t.Errorf("Describe(gonum) = %q", got)
	}
}
