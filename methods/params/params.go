// Package params holds the rules a method's parameters must satisfy that
// need no numerics (which dims divide which), so that a recipe is checked
// against a model's shape without linking the methods themselves. The
// methods check the same rules through it before any work.
package params

import (
	"errors"
	"fmt"
)

// DefaultPaluGroupHeads is G-LRD's default group size.
const DefaultPaluGroupHeads = 4

// PaluGroupHeads returns the number of KV heads per Palu group: want when it
// divides kvHeads, and for want = 0 the largest divisor of kvHeads not above
// DefaultPaluGroupHeads.
func PaluGroupHeads(kvHeads, want int) (int, error) {
	if kvHeads <= 0 {
		return 0, fmt.Errorf("palu: %d KV heads", kvHeads)
	}
	if want == 0 {
		for g := min(DefaultPaluGroupHeads, kvHeads); g >= 1; g-- {
			if kvHeads%g == 0 {
				return g, nil
			}
		}
	}
	if want < 0 || want > kvHeads || kvHeads%want != 0 {
		return 0, fmt.Errorf("palu: group_size %d does not divide the %d KV heads", want, kvHeads)
	}
	return want, nil
}

// MLA is a conversion of a GQA layer to latent attention: the layer's shape
// and the options asked for.
type MLA struct {
	Heads, KVHeads, HeadDim int
	Freqs                   int    // RoPE inverse frequencies the layer has
	RopeDim                 int    // qk_rope_head_dim
	LoraRank                int    // kv_lora_rank
	Rotation                string // none, keys or scores
	FreqFold                int
	SeqLen                  int // calibration sequence length (rotation scores)
}

// Check reports every way the conversion cannot be done.
func (p MLA) Check() error {
	d, D := p.HeadDim, p.KVHeads*p.HeadDim
	var errs []error
	if p.KVHeads <= 0 || p.Heads%p.KVHeads != 0 {
		errs = append(errs, fmt.Errorf("%d query heads are not a multiple of %d KV heads", p.Heads, p.KVHeads))
	}
	if d <= 0 || d%2 != 0 || p.Freqs != d/2 {
		errs = append(errs, fmt.Errorf("head_dim %d with %d RoPE frequencies: want an even head_dim and head_dim/2 frequencies", d, p.Freqs))
	}
	if p.RopeDim < 2 || p.RopeDim%2 != 0 || p.RopeDim > D {
		errs = append(errs, fmt.Errorf("qk_rope_head_dim %d must be even, at least 2 and at most n_kv × head_dim = %d", p.RopeDim, D))
	}
	if p.LoraRank < 1 || p.LoraRank > 2*D {
		errs = append(errs, fmt.Errorf("kv_lora_rank %d must be in [1, 2 × n_kv × head_dim = %d]", p.LoraRank, 2*D))
	}
	h := d / 2
	f := p.FreqFold
	switch {
	case f < 1 || h <= 0 || h%f != 0:
		errs = append(errs, fmt.Errorf("freqfold %d must divide head_dim/2 = %d", f, h))
	case p.Rotation == "keys" && (p.RopeDim/2*f)%h != 0:
		errs = append(errs, fmt.Errorf("rotation keys keeps the same number of RoPE pairs per group of %d frequencies: qk_rope_head_dim/2 = %d × freqfold %d must be a multiple of head_dim/2 = %d",
			f, p.RopeDim/2, f, h))
	}
	switch p.Rotation {
	case "none", "keys":
	case "scores":
		if p.SeqLen < 1 {
			errs = append(errs, fmt.Errorf("rotation scores needs the calibration sequence length"))
		}
	default:
		errs = append(errs, fmt.Errorf("rotation %q unknown (want none, keys or scores)", p.Rotation))
	}
	return errors.Join(errs...)
}
