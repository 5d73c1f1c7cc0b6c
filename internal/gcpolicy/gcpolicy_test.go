package gcpolicy

import (
	"runtime/debug"
	"testing"
)

func TestApply(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	Apply()
	if got := debug.SetGCPercent(100); got != Percent {
		t.Errorf("GOGC unset: collector at %d%%, want %d%%", got, Percent)
	}
	t.Setenv("GOGC", "80")
	Apply()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC set by the user: Apply changed the collector's target to %d%%", got)
	}
}
