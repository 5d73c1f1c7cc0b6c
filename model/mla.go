package model

// MLA is DeepSeek-V2/V3 multi-head latent attention. It replaces a block's
// k_proj and v_proj (Block.K and Block.V are nil when Block.MLA is set):
// Block.Q is q_proj with per-head rows [q_nope (NopeDim); q_rope (RopeDim)],
// and Block.O reads NumHeads·VDim values. Each token caches its latent
// (LoraRank values) and one rope key shared by all heads (RopeDim values).
type MLA struct {
	// KVA is kv_a_proj_with_mqa, (LoraRank+RopeDim)×hidden: rows [latent; rope key].
	KVA *Dense
	// KVANorm is kv_a_layernorm over the latent; nil when absent (a model
	// converted from GQA has none).
	KVANorm []float32
	// KVB is kv_b_proj, NumHeads·(NopeDim+VDim)×LoraRank: per head rows [k_nope; v].
	KVB *Dense

	LoraRank, RopeDim, NopeDim, VDim int
	// RopeFreq holds RopeDim/2 inverse frequencies. The rope dims of queries
	// and keys are interleaved as in DeepSeek: pair i is dims (2i, 2i+1),
	// rotated by position·RopeFreq[i].
	RopeFreq []float64
}
