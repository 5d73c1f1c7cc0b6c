package model

import (
	"fmt"
	"slices"
)

// Phi-3 and Phi-4 (model_type phi3; transformers' models/phi3/modeling_phi3.py)
// are Llama with fused tensors: self_attn.qkv_proj.weight holds the rows of
// q_proj, k_proj and v_proj in that order, and mlp.gate_up_proj.weight the
// rows of gate_proj then up_proj (Phi3MLP: gate, up = chunk(2)); no biases;
// sliding_window, when set, applies to every layer (as Mistral);
// rms_norm_eps defaults to 1e-5.
//
// Compression treats a fused tensor as the separate matrices it stands for:
// the loader splits qkv_proj into q_proj, k_proj and v_proj and gate_up_proj
// into gate_proj and up_proj, so targets, ranks, calibration statistics and
// every method are those of Llama's seven linears (compressing the fused
// matrix as one would share one rank and one whitening between q, k and v,
// whose inputs are the same but whose roles, and head counts, are not).
// Export fuses them again: the dense export writes qkv_proj and gate_up_proj
// exactly as the source did. A native checkpoint keeps a group fused where
// all its members stay dense and writes every member of a group under its
// split name (q_proj.A.weight, k_proj.weight, ...) as soon as one of them
// is factored, quantized or Palu-grouped; rankzip's loader reads both.
//
// EoRA's PEFT adapter names the split modules (self_attn.q_proj, ...):
// rankzip's eval --adapter applies it, but PEFT cannot attach it to a stock
// Phi3ForCausalLM, which has no such modules.
//
// Refused: partial_rotary_factor other than 1 (Phi-4-mini) and the longrope
// scaling of the 128k models, both by the RoPE parser naming the field.
// attention_bias and mlp_bias are ignored, as Phi3Config does.

// phi3 reads Phi-3's own config fields.
func (p *parser) phi3(c *Config) {
	c.Fused = true
	c.QKVBias, c.OBias, c.MLPBias = false, false, false // Phi3Config has neither; its linears have no bias
}

// fusedGroups are Phi-3's fused tensors and the modules they hold, in row order.
var fusedGroups = []struct {
	name    string
	modules []string
}{
	{"self_attn.qkv_proj", []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}},
	{"mlp.gate_up_proj", []string{"mlp.gate_proj", "mlp.up_proj"}},
}

// stored reports whether module (prefix p) is stored in another layout
// than a plain weight: factored, Palu-grouped or quantized.
func (c *Config) stored(module string) bool {
	_, f := c.Factored[module]
	_, g := c.Grouped[module]
	_, q := c.Quantized[module]
	return f || g || q
}

// fusedSpecs returns the fused tensors of layer prefix p and the modules
// they hold: a group is fused when none of its modules is stored otherwise.
func fusedSpecs(c *Config, p string) ([]tensorSpec, map[string]bool) {
	var specs []tensorSpec
	fused := map[string]bool{}
	for _, g := range fusedGroups {
		if slices.ContainsFunc(g.modules, func(m string) bool { return c.stored(p + m) }) {
			continue
		}
		rows := 0
		for _, m := range g.modules {
			out, in, _ := linearShape(c, m)
			rows += out
			fused[m] = true
			if m == g.modules[len(g.modules)-1] {
				specs = append(specs, tensorSpec{name: p + g.name + ".weight", shape: []int{rows, in}})
			}
		}
	}
	return specs, fused
}

// splitFused replaces the fused tensors of layer prefix p in tensors by the
// weights of the modules they hold.
func splitFused(c *Config, p string, tensors map[string][]float32) {
	for _, g := range fusedGroups {
		w, ok := tensors[p+g.name+".weight"]
		if !ok {
			continue
		}
		off := 0
		for _, m := range g.modules {
			out, in, _ := linearShape(c, m)
			tensors[p+m+".weight"] = w[off : off+out*in]
			off += out * in
		}
		delete(tensors, p+g.name+".weight")
	}
}

// addFused writes, through add, the fused tensor of every group of block b
// (layer prefix p) whose modules are all dense, and returns those modules.
func addFused(b *Block, p string, add func(string, []int, []float32) error) (map[string]bool, error) {
	fused := map[string]bool{}
	for _, g := range fusedGroups {
		var w []float32
		in, rows := 0, 0
		all := true
		for _, m := range g.modules {
			d, ok := (*b.Linear(m)).(*Dense)
			if !ok {
				all = false
				break
			}
			if d.Bias != nil {
				return nil, fmt.Errorf("save model: %s%s has a bias, which Phi-3's fused %s cannot hold", p, m, g.name)
			}
			w = append(w, d.Weight...)
			in, rows = d.in, rows+d.out
		}
		if !all {
			continue
		}
		if err := add(p+g.name+".weight", []int{rows, in}, w); err != nil {
			return nil, err
		}
		for _, m := range g.modules {
			fused[m] = true
		}
	}
	return fused, nil
}
