package compress

import (
	"slices"
	"testing"

	"github.com/rankzip/rankzip/methods/mla"
	"github.com/rankzip/rankzip/model"
)

// The rotation names a recipe is checked against are methods/mla's.
func TestRotationNamesAreMLAs(t *testing.T) {
	var want []string
	for _, r := range []mla.Rotation{mla.RotateNone, mla.RotateKeys, mla.RotateScores} {
		want = append(want, string(r))
	}
	if !slices.Equal(model.Rotations, want) {
		t.Errorf("model.Rotations %v, methods/mla's %v", model.Rotations, want)
	}
	if !slices.Contains(want, string(DefaultRotation)) {
		t.Errorf("default rotation %q is not one of mla's %v", DefaultRotation, want)
	}
}
