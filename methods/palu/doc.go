// Package palu factors the key and value projections of an attention layer
// so that a small latent per token can be cached instead of full keys and
// values (Palu, arXiv 2407.21118).
//
// W (n_kv·d × hidden, HF layout) is split by rows into groups of g KV heads,
// W⁽ʲ⁾ ((g·d) × hidden). Each group is approximated at its own rank rⱼ by the
// whitened SVD under the attention-input Gram C (methods/svd.Whiten):
//
//	W⁽ʲ⁾ ≈ Lⱼ Rⱼ,  Rⱼ (rⱼ × hidden) the down-projection, Lⱼ ((g·d) × rⱼ) the up-projection.
//
// The cached latent of a token x is [R₁x; …; R_Gx] (Σ rⱼ values); keys and
// values are rebuilt per group as Lⱼ (Rⱼ x) + bⱼ, the original bias moved to
// the up-projection. g = 1 is M-LRD, g = n_kv is J-LRD, anything between is
// G-LRD. At the same total rank J-LRD ≤ G-LRD ≤ M-LRD in calibration error,
// because a finer grouping's factors are a special case of a coarser one's.
//
// Contract: pure math on float64 gonum matrices, no I/O. Weights are in the
// Hugging Face layout (out × in, row-major), Grams symmetric float64 from the
// calibration activations. Inconsistent dimensions are programming errors
// and panic (ErrShape); data the decomposition cannot use (NaN or Inf, a
// solver that does not converge) is an error. Ranks are
// the caller's: Spectra gives what a rank search needs, Decompose factors at
// the ranks it is given. Results are deterministic for a given backend.
package palu
