// Package quant quantizes a linear layer's weight to 2, 3, 4 or 8 bits per
// value: round-to-nearest (RTN) and GPTQ (Frantar et al. 2022, "GPTQ:
// Accurate Post-Training Quantization for Generative Pre-trained
// Transformers", arXiv 2210.17323), with the integer codes, scales and zero
// points the Hugging Face GPTQ checkpoint format stores (package model/gptq
// packs them).
//
// # Shapes and conventions
//
// W is a weight in Hugging Face layout, out × in, y = W x. C = Σₜ xₜ xₜᵀ is
// the uncentred Gram matrix of the layer's inputs over N calibration tokens
// (in × in, float64). Inputs are never modified; every result is freshly
// allocated. A shape mismatch panics with an error wrapping ErrShape; an
// unsupported configuration (ErrConfig), NaN or Inf (ErrNonFinite) and a Gram
// matrix that is not positive semi-definite (ErrNotPSD) are returned as
// errors.
//
// # Groups, codes and the quantizer
//
// The in columns are cut into groups of GroupSize consecutive columns (32, 64
// or 128, dividing in), or one group per output channel spanning the whole
// row (GroupSize 0 or −1). Every (group g, output channel i) has a scale s
// and an integer zero point z; with maxq = 2^bits − 1 a weight w becomes
//
//	q = clamp(round(w / s) + z, 0, maxq),   ŵ = s · (q − z)
//
// (round half to even, as torch.round). From the group's range
// lo = min(0, min w), hi = max(0, max w) (both 0: lo, hi = −1, 1):
//
//	asymmetric:  s = (hi − lo) / maxq,               z = round(−lo / s)
//	symmetric:   s = 2 · max(−lo, hi) / maxq,        z = 2^(bits−1)
//
// Two departures from the GPTQ reference's quantizer, both so that what is
// computed here is exactly what a loader of the exported checkpoint sees:
//   - s is rounded up to the next float16 value (checkpoints store float16
//     scales; rounding up keeps the range covered, so |w − ŵ| ≤ s/2 for every
//     weight of the range the scale was fitted to);
//   - an asymmetric z of 0 (a group with lo > −s/2) becomes 1 with
//     s = hi / (maxq − 1): the GPTQ v1 format stores z − 1, and loaders read
//     a stored −1 as 2^bits instead of 0. Zero points are therefore in
//     [1, maxq].
//
// A symmetric group whose values are all non-negative keeps the symmetric
// range ±hi (the reference then halves the range, clipping the top half).
// GIdx[j] = j / GroupSize is the group of input column j; it is that also
// with act-order (static groups, below).
//
// # The calibration objective
//
// Both methods are judged by the error the layer makes on the calibration
// inputs, ℰ(Ŵ) = tr((W − Ŵ) C (W − Ŵ)ᵀ) = ‖(W − Ŵ) Xᵀ‖²_F (CalibError).
// Rows are independent; GPTQ minimises Σᵢ (wᵢ − ŵᵢ)ᵀ H (wᵢ − ŵᵢ) with the
// Hessian H = 2C/N, greedily one column at a time, updating the columns not
// yet quantized to absorb each column's error (Optimal Brain Quantization).
//
// # GPTQ
//
//  1. Dead inputs, Cⱼⱼ = 0 (never excited by the calibration set): Hⱼⱼ = 1.
//     The column's error then propagates nowhere and it is rounded to
//     nearest. (The reference also zeroes such columns of W; keeping their
//     RTN value costs nothing on ℰ and is the safer guess off the
//     calibration set.) A dead input with non-zero correlations, or a
//     negative Cⱼⱼ, means C is not positive semi-definite: ErrNotPSD.
//
//  2. Act-order (desc_act): columns are processed in order of decreasing
//     Hⱼⱼ (a stable sort; Result.Perm).
//
//  3. Groups are static by default: the scale and zero point of every group
//     come from the original weights of its original columns, before any
//     update (the reference's static_groups), so they are RTN's, GIdx stays
//     j / GroupSize whatever the order, and the export needs no reordering.
//     Config.DynamicGroups (without act-order) takes them instead from the
//     group's weights as they stand when the block holding the group's first
//     column starts, updated by the earlier blocks (the reference's default).
//     Static groups are the better choice measured (below).
//
//  4. Damping: H + δI, δ = λ · mean(diag H), λ = Config.Damp (default 0.01).
//     When the Cholesky factorisation fails λ is raised tenfold, up to three
//     times (λ, 10λ, 100λ, 1000λ); Result.Damp reports the λ used. A
//     failure at 1000λ is ErrNotPSD.
//
//  5. U, the upper Cholesky factor of (H + δI)⁻¹ (Uᵀ U = H⁻¹), in processing
//     order. With J the reversal permutation, J H J = L Lᵀ gives H = R Rᵀ,
//     R = J L J upper, so U = R⁻¹ = J L⁻¹ J: one Cholesky (kernels.Backend)
//     and one triangular inverse (recursive, its products on the backend).
//
//  6. For blocks of BlockSize = 128 columns, for each column j of the block:
//     quantize it, eⱼ = (wⱼ − ŵⱼ) / Uⱼⱼ, and subtract eⱼ Uⱼ,ₖ from the
//     block's later columns k; after the block, subtract E U[block, rest]
//     from all later columns at once (one Dgemm, the lazy batch update).
//
//  7. Result.CalibError, ℰ under the undamped C, comes out of the loop: each
//     column's final value is its original one minus the updates
//     Σ_{k<j} eₖ Uₖⱼ, so W − Ŵ = E U, and U H Uᵀ = I for the damped
//     H = (2/N) C + D (D diagonal: δ, plus 1 on dead inputs), hence
//
//     tr((W − Ŵ) H (W − Ŵ)ᵀ) = ‖E‖²_F,   ℰ = (N/2) (‖E‖²_F − Σⱼ Dⱼⱼ ‖wⱼ − ŵⱼ‖²)
//
//     in O(out·in) instead of a product with C (twice the flops of GPTQ
//     itself). The tests check it against CalibError to 10⁻⁹.
//
// On random 32 × 256 layers with correlated inputs (TestGPTQNotWorseThanRTN,
// go test -v) the GPTQ/RTN calibration error ratio, geometric mean and worst
// over 8 to 12 cases, is:
//
//	                  2 bits       3 bits       4 bits       8 bits
//	static groups     0.53, 0.59   0.48, 0.56   0.48, 0.54   0.48, 0.55
//	act-order         0.29, 0.32   0.23, 0.27   0.23, 0.25   0.22, 0.24
//	dynamic groups    0.85, 1.07   0.54, 0.63   0.49, 0.55   0.47, 0.54
//
// GPTQ's error is not guaranteed to be below RTN's for every layer (it is a
// greedy method), but with static groups and a calibration set that excites
// the inputs it is far below it; the tests check it on random layers for
// every bit width, grouping, symmetry and act-order.
package quant
