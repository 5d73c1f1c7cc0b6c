package model

// Gemma 2 (model_type gemma2, Gemma2ForCausalLM; transformers'
// models/gemma2/modeling_gemma2.py and configuration_gemma2.py) is Gemma 3's
// text model (gemma3.go) without the q/k norms and with:
//
//   - one RoPE for every layer (rope_theta, 10000 by default; 5.x
//     rope_parameters as one object);
//   - layer_types defaulting to sliding on even layers (0, 2, ...), global
//     on odd ones;
//   - attention soft-capping: each scaled score s becomes c·tanh(s/c)
//     before the mask and softmax, c = attn_logit_softcapping (50 when
//     absent, none when null);
//   - final_logit_softcapping 30 when absent (none when null).
//
// Supported and refused as Gemma 3 (the backward pass goes through the
// attention soft cap: 1 − tanh² on the scores).

// gemma2 reads Gemma 2's own config fields.
func (p *parser) gemma2(c *Config) {
	c.Gemma = &GemmaConfig{LocalRopeTheta: c.RopeTheta, LocalRopeScaling: c.RopeScaling,
		AttnSoftcap: p.softcap("attn_logit_softcapping", 50)}
	p.gemma(c, 2, 30)
}

// gemma2Rope reads Gemma 2's one RoPE, which its sliding layers share.
func (p *parser) gemma2Rope() RopeSettings {
	theta, scaling := p.rope()
	return RopeSettings{Theta: theta, Scaling: scaling, LocalTheta: theta, LocalScaling: scaling}
}
