// Package eora compensates the error of a compressed linear layer with a
// low-rank correction fitted in the eigenspace of the layer's input
// activations: EoRA (Liu et al. 2024, "EoRA: Fine-tuning-free Compensation for
// Compressed LLM with Eigenspace Low-Rank Approximation", arXiv 2410.21271;
// NVlabs/EoRA, and GPTQModel's hardened version). The correction is exported
// as a PEFT LoRA adapter, so the compressed weight itself is untouched.
//
// # Shapes and conventions
//
// W is the original weight and W_c its compressed version (quantized,
// low-rank, pruned, or any mix), both out × in in Hugging Face layout
// (y = W x). C = Σₜ xₜ xₜᵀ is the uncentred input Gram over the calibration
// tokens (in × in, float64). Compensate returns B (out × r) and A (r × in)
// with W_c + B A ≈ W; as a LoRA adapter lora_B = B, lora_A = A and
// lora_alpha = r (scaling 1). Inputs are never modified. A shape mismatch or
// a rank outside [1, min(out, in)] panics with an error wrapping ErrShape;
// NaN or Inf (ErrNonFinite), a zero Gram matrix (ErrZeroGram) and a Gram
// matrix with a clearly negative eigenvalue (ErrNotPSD) are returned as
// errors.
//
// # The objective
//
// With ΔW = W − W_c, the correction minimises the calibration error of the
// compensated layer,
//
//	ℰ(B A) = tr((ΔW − B A) C (ΔW − B A)ᵀ) = ‖(ΔW − B A) Xᵀ‖²_F
//
// over rank-r products. For any S with S Sᵀ = C, ℰ = ‖(ΔW − B A) S‖²_F, so
// the optimum is the truncated SVD of ΔW S mapped back by S⁻¹ (Eckart–Young).
//
// # Algorithm (as GPTQModel after its PR 3014)
//
//	C = Q diag(λ) Qᵀ                    eigendecomposition, float64 (kernels.Backend)
//	K = {i : λᵢ > τ},  τ = min(1, in·ε₃₂)·λ_max,  ε₃₂ = 2⁻²³
//	Q′ = Q_K diag(√λ_K)                 in × |K|, the eigen square root on the kept space
//	ΔW Q′ = U Σ Vᵀ                      thin SVD, σ₁ ≥ σ₂ ≥ …
//	B = U_r Σ_r^½                       out × r
//	A = Σ_r^½ V_rᵀ Q′⁺,  Q′⁺ = diag(1/√λ_K) Q_Kᵀ    r × in
//
// Eigen-directions at or below τ carry no calibration energy the data can
// resolve; dividing by their √λ is what made the earlier rule (negative
// eigenvalues replaced by the smallest positive one) blow up silently, so
// they are dropped: Q′⁺ is the pseudo-inverse on the kept eigenspace, and A
// has no component along the dropped directions. Eigenvalues below −τ mean C
// is not a Gram matrix (ErrNotPSD).
//
// Properties (the tests check each):
//   - ℰ(B A) = Σ_{i>r} σᵢ² plus the energy of ΔW along the dropped
//     directions (at most τ‖ΔW‖²_F), so it never exceeds ℰ(0) = tr(ΔW C ΔWᵀ)
//     and does not increase with r;
//   - with every eigenvalue kept and r = min(out, in), W_c + B A = W;
//   - the result beats plain SVD of ΔW ([ΔW]_r, ZeroQuant-V2's LoRC) on ℰ,
//     as it is the optimum of ℰ at rank r.
//
// Σ^½ is split between the two factors, as the reference code does, which
// keeps both in the same range should they be quantized later (GPTQModel
// keeps them in floating point; so does this package).
package eora
