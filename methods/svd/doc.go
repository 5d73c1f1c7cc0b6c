// Package svd factors a linear layer's weight into two low-rank factors,
// optionally aware of the activations the layer sees.
//
// # Shapes and conventions
//
// W is a weight in Hugging Face layout, out × in, with y = W x + b. C is the
// uncentred Gram matrix of the layer's inputs over N calibration tokens,
//
//	C = Σₜ xₜ xₜᵀ = Xᵀ X        (in × in, X is N × in, one token a row)
//
// accumulated in float64. Every method returns W ≈ B A with B out × r and
// A r × in, so the factored layer computes y = B (A x) + b. Inputs are never
// modified; every result is freshly allocated. A shape mismatch (or a rank
// outside [1, min(out, in)]) is a programming error and panics with an error
// wrapping ErrShape; data-dependent failures (NaN or Inf in the inputs, a zero
// Gram matrix, a solver that does not converge) are returned as errors.
//
// The big operations (Cholesky, Eigh, SVD, large products) go through the
// kernels.Backend passed in; only O(out·in) glue runs in plain Go.
//
// # The calibration objective
//
// All methods aim at the error the layer makes on the calibration inputs:
//
//	ℰ(W′) = ‖(W − W′) Xᵀ‖²_F = tr((W − W′) C (W − W′)ᵀ)
//
// CalibError evaluates ℰ directly. For any square root S with S Sᵀ = C,
// ℰ(W′) = ‖(W − W′) S‖²_F, so by Eckart–Young the best rank-r W′ is
// [W S]_r S⁻¹ and its error is the sum of the squared singular values of W S
// that were dropped.
//
// # Whiten (SVD-LLM, Wang et al. 2024, arXiv 2403.07378, Theorem 3.2)
//
//	C = S Sᵀ                       S = L, the Cholesky factor
//	W S = U Σ Vᵀ                   thin SVD, σ₁ ≥ σ₂ ≥ … ≥ σₚ, p = min(out, in)
//	B = U_r Σ_r^½                  out × r
//	A = Σ_r^½ V_rᵀ S⁻¹             r × in
//	ℰ(B A) = Σ_{i>r} σᵢ²
//
// Because V_rᵀ = Σ_r⁻¹ U_rᵀ W S, the second factor equals
//
//	A = Σ_r^{-½} U_rᵀ W            so B A = U_r U_rᵀ W,
//
// which is how it is computed: no triangular solve, no inverse of S, and the
// same formula whatever square root was used. U_r are also the top r
// eigenvectors of the output Gram W C Wᵀ = U Σ² Uᵀ, which is why LORD (package
// lord) reaches the same error.
//
// Square root of C. Cholesky first. When it fails, or succeeds with a pivot
// below 10⁻¹⁰ · mean(diag C) (C numerically singular, typically N < in), C is
// damped, C + δI with δ = {10⁻¹⁰, 10⁻⁸, 10⁻⁶, 10⁻⁴} · mean(diag C) tried in
// turn. The tiny ridge also orders the directions the calibration set never
// excites by the size of W in them, instead of by rounding noise. When no
// damping helps (C indefinite beyond rounding), the eigen square root
// S = Q diag(√max(λ, 0)) of C = Q Λ Qᵀ is used. Result.Path and Result.Damping
// say which was taken; PredictedError is corrected back to the undamped C:
//
//	ℰ_C(B A) = Σ_{i>r} σᵢ²(W S_δ) − δ ‖W − B A‖²_F
//
// Directions with no calibration energy. Components with σᵢ² ≤ max(out, in) ·
// ε · σ₁² carry nothing the calibration set can see and their singular vectors
// are noise. When the requested rank reaches past that numerical rank
// (Result.DataRank), the remaining components are the leading singular
// triplets of the residual R = (I − U_k U_kᵀ) W, the best Frobenius
// approximation of what the calibration data leaves undetermined, instead of
// being dropped (as a pseudo-inverse of S would) or arbitrary. At full rank
// every path then reproduces W.
//
// # ASVD (Yuan et al. 2023, arXiv 2312.05821)
//
//	D = diag(sⱼ),  sⱼ = mean|xⱼ|^α  (sⱼ floored at 10⁻⁶ · maxⱼ sⱼ)
//	W D = U Σ Vᵀ,  B = U_r Σ_r^½,  A = Σ_r^½ V_rᵀ D⁻¹
//
// a diagonal, non-whitening scaling, so only approximately optimal for ℰ.
// Its PredictedError is its own objective ‖(W − B A) D‖²_F = Σ_{i>r} σᵢ².
//
// # Plain
//
// Truncated SVD of W itself; PredictedError = ‖W − B A‖²_F = Σ_{i>r} σᵢ².
//
// # Sequential calibration (CorrectedTarget)
//
// When the layer's inputs come from an already compressed prefix (X_c, with
// C = X_cᵀ X_c) but the target is still the original output X_o Wᵀ,
//
//	‖X_o Wᵀ − X_c W′ᵀ‖²_F = ‖X_c (W̃ − W′)ᵀ‖²_F + const,  W̃ = W (X_oᵀ X_c) C⁻¹,
//
// so the best rank-r W′ is Whiten(W̃, C). CorrectedTarget computes W̃ with a
// ridge towards W, W̃ = (W K + δW)(C + δI)⁻¹ with K = X_oᵀ X_c and
// δ = 10⁻⁶ · mean(diag C): W̃ = W exactly when the two streams agree, and
// W̃ = W on directions the compressed stream never visits.
package svd
