// Package mla converts a grouped-query attention layer into multi-head latent
// attention in the layout of DeepSeek-V2/V3 (TransMLA, arXiv 2502.07864).
//
// Notation: n_kv KV heads of head_dim d, D = n_kv·d stacked key (and value)
// dims, h = d/2 RoPE frequencies per head (Hugging Face rotate-half layout:
// dim j of a head pairs with j+h and rotates at InvFreq[j]).
//
// The conversion has three parts.
//
//  1. RoPE compression. RoPE rotates every head's pair j by the same angle,
//     so any mixing of the heads' pairs of one frequency, applied alike to
//     the real and imaginary halves, commutes with it: keys k' = A k and
//     queries q' = A⁻ᵀ q give the same scores. After mixing, RopeDim/2 of the
//     D/2 complex components keep RoPE (the shared rope key of MLA); the
//     others lose it and join the no-RoPE keys. Which mixing and which
//     components is the Rotation: none (the first heads' own RoPE dims),
//     keys (RoRoPE: PCA of the keys per frequency, same count per
//     frequency), or scores (below). FreqFold f mixes f adjacent frequencies
//     together; a kept component then rotates at its dominant frequency, an
//     approximation.
//  2. BKV and the latent. The no-RoPE keys are scaled by α (mean column norm
//     of keys over that of values) so that keys and values weigh alike, then
//     a PCA of the calibration [K_nope/α; V] keeps kv_lora_rank components:
//     the cached latent c. kv_b_proj rebuilds per head [k_nope; v] from c.
//  3. Queries. Each head's q_proj rows become [q (no-RoPE part, d dims);
//     the head's keys' inverse mixing applied to q (rope part)], scaled by
//     √(d+RopeDim)/√d because MLA divides scores by √(d+RopeDim).
//
// With RopeDim = D and kv_lora_rank ≥ 2D − RopeDim nothing is dropped and the
// MLA layer computes exactly what the GQA layer did.
//
// The scores rotation is query-aware. Moving a component from RoPE to no-RoPE
// changes a score by Re(q̄'k'(e^{iθΔ}−1)), whose expected square is about
// E|q'|²·E|k'|²·w(θ) with w(θ) = E_Δ|e^{iθΔ}−1|² over the query–key
// distances Δ of the calibration sequences. Per frequency group the mixing
// A that makes E|q'_c|²·E|k'_c|² = s_c² diagonal is balanced truncation:
// with Σ_k = L_k L_kᵀ, Σ_q = L_q L_qᵀ (queries of the heads sharing each KV
// head) and L_qᵀ L_k = U S Vᵀ, A = S^½ Vᵀ L_k⁻¹. The components with the
// largest s_c²·w(θ_c), over all frequencies, keep RoPE.
//
// Contract: pure math on float64 gonum matrices, no I/O. Convert takes one
// layer's attention weights (Hugging Face layout) and the calibration
// statistics of its input (Stats: Σxxᵀ, Σx and the token count) and returns
// the MLA layer's weights in the DeepSeek-V3 layout, with the shares of the
// key energy the rope dims and the latent keep. Options that cannot be
// honoured (a rope dim that is odd or larger than the keys, a latent rank
// out of range, a freqfold that does not divide head_dim/2) are one error
// naming each; weights of the wrong shape are an error naming the tensor. With the lossless
// settings described above the converted layer computes what the original
// did, up to float rounding (tested).
package mla
