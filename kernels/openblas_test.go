//go:build cgo

package kernels_test

import (
	"testing"

	"github.com/rankzip/rankzip/kernels"
)

// With cgo on, OpenBLAS must be the default and listed, so that the
// conformance suite and TestBackendsAgree cover it rather than skip it.
func TestCgoBuildsOpenBLAS(t *testing.T) {
	if got := kernels.Default().Name(); got != (kernels.OpenBLAS{}).Name() {
		t.Fatalf("Default() = %s with cgo on, want openblas", got)
	}
	avail := kernels.Available()
	if len(avail) < 2 || avail[0].Name() != "openblas" {
		t.Fatalf("Available() = %v, want openblas and gonum", avail)
	}
}
