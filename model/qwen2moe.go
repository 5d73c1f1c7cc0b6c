package model

import (
	"errors"
	"fmt"
	"math"
)

// Qwen2-MoE (model_type qwen2_moe; transformers'
// models/qwen2_moe/modeling_qwen2_moe.py): Qwen2's attention (biases on q,
// k and v, none on o) and Qwen2MoeSparseMoeBlock, which is Qwen3-MoE's
// routed experts (moe.go; norm_topk_prob defaults to false) plus a shared
// expert that every token goes through, scaled by a sigmoid gate:
// y = Σ w_e · expert_e(x) + sigmoid(shared_expert_gate x) · shared_expert(x).
// Tensors: mlp.shared_expert.{gate,up,down}_proj.weight and
// mlp.shared_expert_gate.weight [1, hidden], besides Qwen3-MoE's. The
// shared expert's linears are compression targets as the routed experts'
// are (mlp.shared_expert.gate_proj, up_proj, down_proj; moe.go's
// SharedExpert), calibrated on every token; its sigmoid gate stays dense.
// Refused:
// use_sliding_window, decoder_sparse_step > 1 and mlp_only_layers.

// qwen2moe reads Qwen2-MoE's own config fields.
func (p *parser) qwen2moe(c *Config) {
	c.QKVBias, c.OBias, c.MLPBias = true, false, false // Qwen2MoeAttention; attention_bias is not read
	if p.boolean("use_sliding_window", false) {
		p.fail("use_sliding_window", errors.New("true: sliding-window attention for qwen2_moe is not supported"))
	}
	c.MoE = &MoEConfig{Experts: p.positive("num_experts"), TopK: p.positive("num_experts_per_tok"),
		Inter: p.positive("moe_intermediate_size"), NormTopK: p.boolean("norm_topk_prob", false),
		Prefix: "mlp.", Names: [3]string{"gate_proj", "up_proj", "down_proj"},
		SharedInter: p.positive("shared_expert_intermediate_size")}
	p.checkTopK(c.MoE, "num_experts")
	p.moeRouting(true)
	p.sparseEveryLayer()
}

// sharedName is the tensor of the shared expert's module j (0 gate, 1 up,
// 2 down) of layer prefix p.
func sharedName(p string, j int) string {
	return fmt.Sprintf("%smlp.shared_expert.%s.weight", p, expertLinears[j])
}

// sharedGateName is the shared expert's gate of layer prefix p.
func sharedGateName(p string) string { return p + "mlp.shared_expert_gate.weight" }

// sharedShape is (out, in) of the shared expert's module j.
func sharedShape(c *Config, j int) (int, int) {
	if j == 2 {
		return c.HiddenSize, c.MoE.SharedInter
	}
	return c.MoE.SharedInter, c.HiddenSize
}

// sharedSpecs lists the shared expert's tensors of layer prefix p.
func sharedSpecs(c *Config, p string) []tensorSpec {
	if c.MoE.SharedInter == 0 {
		return nil
	}
	specs := []tensorSpec{{name: sharedGateName(p), shape: []int{1, c.HiddenSize}}}
	for j := range 3 {
		out, in := sharedShape(c, j)
		specs = append(specs, tensorSpec{name: sharedName(p, j), shape: []int{out, in}})
	}
	return specs
}

// newShared builds layer prefix p's shared expert and its gate, nil when
// there is none.
func newShared(c *Config, p string, tensors map[string][]float32) (*Expert, *Dense) {
	if c.MoE.SharedInter == 0 {
		return nil, nil
	}
	var x [3]Linear
	for j := range 3 {
		out, in := sharedShape(c, j)
		x[j] = NewDense(out, in, tensors[sharedName(p, j)], nil)
	}
	return &Expert{Gate: x[0], Up: x[1], Down: x[2]}, NewDense(1, c.HiddenSize, tensors[sharedGateName(p)], nil)
}

// addShared writes the shared expert of e through add.
func addShared(c *Config, e *MoE, p string, add func(string, []int, []float32) error) error {
	if e.Shared == nil {
		return nil
	}
	if err := add(sharedGateName(p), []int{1, c.HiddenSize}, e.SharedGate.Weight); err != nil {
		return err
	}
	for j, l := range []Linear{e.Shared.Gate, e.Shared.Up, e.Shared.Down} {
		d, ok := l.(*Dense)
		if !ok || d.Bias != nil {
			return fmt.Errorf("save model: %s is %T; the shared expert is written dense, without bias", sharedName(p, j), l)
		}
		if err := add(sharedName(p, j), []int{d.out, d.in}, d.Weight); err != nil {
			return err
		}
	}
	return nil
}

// addShared adds to y (rows×dim) the shared expert's output on x, scaled
// per row by sigmoid(SharedGate x); nothing when there is no shared expert.
func (e *MoE) addShared(m *Model, y, x []float32, rows, dim int) {
	if e.Shared == nil {
		return
	}
	g := make([]float32, rows)
	e.SharedGate.Apply(m.Backend, g, x, rows)
	out := make([]float32, rows*dim)
	e.Shared.Down.Apply(m.Backend, out, e.Shared.Hidden(m, x, rows), rows)
	for r := range rows {
		s := float32(1 / (1 + math.Exp(-float64(g[r]))))
		for t, v := range out[r*dim : (r+1)*dim] {
			y[r*dim+t] += s * v
		}
	}
}
