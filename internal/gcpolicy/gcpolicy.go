// Package gcpolicy sets the garbage collector's target of rankzip's
// commands.
package gcpolicy

import (
	"os"
	"runtime/debug"
)

// Percent is the GOGC that rankzip's commands run with when the user sets
// none. Go's default, 100, lets the heap grow to twice what is live before
// a collection. A job's heap is mostly large float arrays without pointers,
// which a collection does not scan, so collecting four times as often costs
// little. Measured on 2 cores in one run of
// `SEARCHES=fisher LAYERS=4 GOGCS="100 50 25" tools/peak-rss.sh` (a whole
// `rankzip run` of a 4-layer bench-1024 checkpoint): peak RSS 1,624,396,
// 1,394,740 and 1,292,328 KiB, in 85.2, 86.8 and 85.4 s.
const Percent = 25

// Apply sets Percent unless the user set GOGC, which wins.
func Apply() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(Percent)
	}
}
