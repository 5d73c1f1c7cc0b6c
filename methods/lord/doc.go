// Package lord factors a linear layer from its output features, one-shot:
// LoRD (Kaushal et al. 2023, "LoRD: Low Rank Decomposition of Monolingual
// Code LLMs for One-Shot Compression", arXiv 2309.14021), in the lineage of
// AFM (Yu and Wu 2023, "features are low-rank, weights are not").
//
// # Shapes and conventions
//
// W is the weight, out × in, in Hugging Face layout (y = W x + b); b the
// optional bias (length out); C = Σₜ xₜ xₜᵀ the uncentred input Gram over N
// calibration tokens (in × in, float64); μ = (1/N) Σₜ xₜ the mean input.
// Decompose returns B (out × r), A (r × in) and a new bias b′, and the
// factored layer computes y′ = B (A x) + b′. Inputs are never modified. A shape
// mismatch panics with an error wrapping ErrShape; bad data (NaN, Inf, a zero
// Gram, a non-positive token count with a bias) is returned as an error.
//
// # Bias-free layers
//
// The output second moment is Σₜ yₜ yₜᵀ = W C Wᵀ = U Λ Uᵀ (eigenvalues in
// descending order), computed from the input Gram, so outputs are never
// stored. With U_r its top r eigenvectors, y′ = U_r U_rᵀ y:
//
//	B = U_r,  A = U_rᵀ W,  ℰ = Σₜ ‖yₜ − y′ₜ‖² = tr((W − B A) C (W − B A)ᵀ) = Σ_{i>r} λᵢ
//
// This is the optimum over all rank-r W′, and the same matrix as whitened SVD
// (package svd): W S = U Σ Vᵀ gives W C Wᵀ = U Σ² Uᵀ, so λᵢ = σᵢ² and
// svd.Whiten's B A = U_r U_rᵀ W. LORD needs no square root or inverse of C
// (one symmetric eigendecomposition of size out), and no bias is introduced.
//
// # Layers with a bias
//
// A layer that has a bias slot may as well use it: choosing (U_r, b′) jointly
// to minimise Σₜ ‖yₜ − y′ₜ‖² gives b′ = b + (I − U_r U_rᵀ) W μ, i.e.
//
//	y′ = U_r U_rᵀ y + (I − U_r U_rᵀ) ȳ,   ȳ = W μ + b,
//
// with U_r the top eigenvectors of the centred output covariance
//
//	Σₜ (yₜ − ȳ)(yₜ − ȳ)ᵀ = W (C − N μ μᵀ) Wᵀ,
//
// and ℰ = Σ_{i>r} λᵢ of that matrix. The bias itself drops out of the
// eigenproblem; the part of the mean output the projection removes is put
// back into the bias (the residual (I − U_r U_rᵀ) ȳ, not dropped). This is
// never worse than the uncentred variant y′ = U_r U_rᵀ y (b′ = U_r U_rᵀ b
// with U_r from the second moment W C Wᵀ + N(W μ bᵀ + b μᵀ Wᵀ) + N b bᵀ),
// which is the special case b′ restricted to the span of U_r.
//
// # Directions with no output energy
//
// Eigenvectors with λᵢ ≤ max(out, in)·ε·λ₁ are rounding noise. When the rank
// reaches past them (Result.DataRank), the remaining components are the
// leading singular triplets (u, s, v) of the residual R = (I − U_k U_kᵀ) W,
// stored as B column u and A row s vᵀ, so full rank reproduces W even when C
// is singular.
package lord
