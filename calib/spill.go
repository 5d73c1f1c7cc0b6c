package calib

import (
	"fmt"
	"os"

	"github.com/rankzip/rankzip/model"
)

// spillStates returns a copy of h whose rows live in a file under dir, mapped
// into memory: the kernel writes the pages back and evicts them when memory
// is short, so only the batch being worked on needs to stay resident.
func spillStates(dir string, h *model.States) (*model.States, error) {
	x, err := spillFloats(dir, len(h.X))
	if err != nil {
		return nil, err
	}
	copy(x, h.X)
	return &model.States{X: x, Dim: h.Dim, Starts: h.Starts}, nil
}

// spillFloats returns n float32s mapped from a new file under dir (see
// spillStates); unmapFloats lets them go.
func spillFloats(dir string, n int) ([]float32, error) {
	f, err := os.CreateTemp(dir, "states-*.f32")
	if err != nil {
		return nil, fmt.Errorf("spill hidden states: %w", err)
	}
	defer f.Close()
	// The mapping keeps the data reachable; the name is not needed.
	defer os.Remove(f.Name())
	x, err := mapFloats(f, n)
	if err != nil {
		return nil, fmt.Errorf("spill hidden states to %s: %w", dir, err)
	}
	return x, nil
}

// spill moves every batch of st under st.Spill (when set).
func (st *Streams) spill() error {
	if st.Spill == "" {
		return nil
	}
	for i, h := range st.Orig {
		s, err := spillStates(st.Spill, h)
		if err != nil {
			return err
		}
		if st.Mode == Sequential && st.Comp[i] == h {
			st.Comp[i] = s // the two streams start out shared
		}
		st.Orig[i] = s
	}
	for i, h := range st.Comp {
		if h == st.Orig[i] {
			continue
		}
		s, err := spillStates(st.Spill, h)
		if err != nil {
			return err
		}
		st.Comp[i] = s
	}
	return nil
}

// Release unmaps the spilled batches of st; st must not be used after.
func (st *Streams) Release() {
	if st.Spill == "" {
		return
	}
	seen := map[*model.States]bool{}
	for _, list := range [][]*model.States{st.Orig, st.Comp} {
		for _, h := range list {
			if !seen[h] {
				seen[h] = true
				unmapFloats(h.X)
			}
		}
	}
	st.Orig, st.Comp = nil, nil
}
