// Package rank allocates ranks to the targeted matrices of a model under one
// global parameter budget.
//
// # Costs and the budget
//
// A matrix W of shape out × in costs out·in parameters dense and r·(out + in)
// factored at rank r (W ≈ B A). Factoring saves parameters only while
// r·(out + in) < out·in, i.e. r < out·in/(out + in) (Matrix.MaxRank); past
// that the matrix stays dense. The budget is keep ∈ (0, 1] of the dense total
// T = Σ out·in: Target = ⌊keep·T⌋. Every allocation gives each matrix at least
// rank 1 (or dense, for shapes where rank 1 costs more than dense).
//
// # Uniform
//
// The same keep ratio everywhere: r = max(1, ⌊keep·out·in/(out + in)⌋); keep = 1
// keeps every matrix dense.
//
// # Global (normalised whitened spectra, as in SVD-LLM V2, arXiv 2503.12340)
//
// With σᵢ the whitened singular values of a matrix (svd.Spectrum, or Sigma of
// svd.Whiten / lord.Decompose), the calibration error at rank r is
// Σ_{i>r} σᵢ². Those errors are in each layer's own units (the scale of its
// inputs), so a global allocation on raw errors starves layers with small
// inputs. Global instead uses the normalised errors
//
//	eᵢ = w · σᵢ² / Σⱼ σⱼ²,   E(r) = Σ_{i>r} eᵢ,  E(dense) = 0,
//
// (w = Matrix.Weight, default 1: the fraction of the layer's output energy
// lost, optionally weighted by how much the layer matters), and minimises
// Σ E over the matrices under the budget. E(r) against cost is convex in r
// (eᵢ is non-increasing), and the dense point (out·in, 0) closes it: the lower
// convex hull is the rank steps up to some r*, then one jump to dense. Global
// starts every matrix at rank 1 and greedily takes the hull step with the
// largest error removed per parameter, across all matrices. A jump to dense
// that does not fit the remaining budget is replaced by that matrix's next
// rank step; a step that does not fit blocks its matrix. Greedy is exact on
// the convex hulls but loses where a worthwhile jump stopped fitting after
// cheaper steps were taken, so an exchange pass follows: for each such
// matrix, make it dense, undo the other matrices' cheapest steps (least error
// per parameter) until the budget fits, grow again, and keep the best
// improvement, until none is left. On the test model this lands within 0.2%
// of the exact knapsack optimum (dynamic programming), and over a thousand
// random small cases 0.45% above it on average (1.8% without the exchange);
// on 224 Llama-7B-shaped matrices it takes under a quarter of a second.
//
// Guarantee: when the minimum allocation fits (Σ (out + in) ≤ Target, rank 1
// everywhere), Params ≤ Target and Target − Params < out + in of every matrix
// left factored, i.e. less than one rank step of the cheapest one; with
// keep = 1 every matrix is dense and Params = T. Otherwise the minimum
// allocation is returned (Params > Target).
//
// # Sensitivity (ASVD, arXiv 2312.05821)
//
// Given a measured loss Lᵢ(ρ) of each matrix i compressed alone at a few keep
// ratios ρ (perplexity, KL or calibration loss of the model; each measurement
// is independent, so callers can fan them out), each matrix's loss is
// interpolated linearly in rank between the measured ranks ⌊ρ·out·in/(out+in)⌋.
// For a threshold τ every matrix takes the smallest rank whose loss is ≤ τ, or
// stays dense if none is; the parameter count falls as τ grows, and bisection
// finds the smallest τ that fits the budget. The remainder is then handed out
// one rank step at a time, to the matrix with the highest current loss first,
// with the same guarantee as Global. A budget below every matrix at its
// smallest measured ratio is an error: measure smaller ratios.
//
// The losses come from the caller. The compress package gets them three
// ways, on the calibration sequences, each matrix compressed alone by the
// stage's method at ρ ∈ {0.1, 0.25, 0.5, 0.75, 1}:
//
//   - sensitivity: the KL of the whole model's logits from the original's,
//     on a few sequences. Every candidate is a whole-model forward:
//     5 · matrices · layers forwards of layers blocks each, so the time
//     grows with depth².
//   - local: the relative squared error ‖y′ − y‖² / ‖y‖² of the hidden
//     states two blocks after the matrix's block (or at the last block's
//     output), so each candidate runs three blocks at most, times the
//     block's gain g = KL / local error, measured once per block with all
//     its targeted matrices at ρ = 0.5 (one forward from that block to the
//     logits). The gain puts the blocks' errors in one unit; the candidates
//     cost time linear in depth, the gains (layers + 1)·layers/2 block runs
//     in all, against up to 35·layers² for the whole-model search with all
//     seven linears.
//   - fisher: predicted, not measured: 0.5·Σ F_jk·ΔW_jk², F the empirical
//     Fisher diagonal of the weight (squared gradients of the next-token
//     loss, one backward pass over the calibration set for all matrices)
//     and ΔW the stage's truncation error at that rank (one decomposition
//     per matrix serves every ratio). Time linear in depth.
//
// On stories260K (keep 0.8, all seven linears, 32 calibration and 8
// evaluation sequences) the KL of the compressed model is 2.53 with
// fisher, 2.58 with sensitivity, 3.05 with local, 4.87 with global and 4.30
// with uniform, so fisher is the default where the architecture has a
// backward pass; local measured at the block's output (3.67) or one block
// after (3.22), or without gains (4.24), does worse (compress's
// TestSensitivityBeatsUniform logs the five KLs). Two records of experiments
// whose code is gone, not reproducible from this repository: on 32
// evaluation sequences fisher gave 2.33, sensitivity 2.40, uniform 4.00; and
// a Kronecker-factored variant of fisher (an output-side Fisher estimated
// from the weight Fisher, times the input Gram) ordered the candidates'
// measured KLs better (Spearman 0.98 against 0.96) but allocated worse
// (2.61 on 8 sequences, 2.42 on 32), so the diagonal form stays.
package rank
