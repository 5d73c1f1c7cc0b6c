package model

import "fmt"

// moeRouting refuses the routing options of config.json that the MoE
// forward pass (moe.go: token choice, softmax over every expert, the top
// num_experts_per_tok, no shared expert) does not honour, naming the field.
// They come from other MoE families' configs (DeepSeek's scoring_func,
// topk_method, n_group, routed_scaling_factor and n_shared_experts;
// Qwen2-MoE's shared expert) or name the routing itself (expert-choice
// routing, where experts pick tokens). Training-only options are accepted:
// router_jitter_noise and router_aux_loss_coef change nothing at inference.
// A shared expert is refused unless shared (Qwen2-MoE's, qwen2moe.go).
func (p *parser) moeRouting(shared bool) {
	if s := p.str("scoring_func", "softmax"); s != "softmax" {
		p.fail("scoring_func", fmt.Errorf("%q: only softmax router scores are supported", s))
	}
	if s := p.str("topk_method", "greedy"); s != "greedy" {
		p.fail("topk_method", fmt.Errorf("%q: only the greedy top-k over all experts is supported", s))
	}
	for _, k := range []string{"n_group", "topk_group"} {
		if v := p.optInt(k); v > 1 {
			p.fail(k, fmt.Errorf("%d: group-limited routing is not supported", v))
		}
	}
	if v := p.float("routed_scaling_factor", 1); v != 1 {
		p.fail("routed_scaling_factor", fmt.Errorf("%v: scaling the routed experts' output is not supported (only 1)", v))
	}
	for _, k := range []string{"n_shared_experts", "shared_expert_intermediate_size"} {
		if v := p.optInt(k); v > 0 && !(shared && k == "shared_expert_intermediate_size") {
			p.fail(k, fmt.Errorf("%d: shared experts are not supported for this model_type", v))
		}
	}
	for _, k := range []string{"router_type", "routing_type", "routing_method"} {
		switch s := p.str(k, "token_choice"); s {
		case "token_choice", "top_k", "topk":
		case "expert_choice":
			p.fail(k, fmt.Errorf("%q: expert-choice routing (experts pick their tokens) is not supported; only token choice (top num_experts_per_tok experts per token)", s))
		default:
			p.fail(k, fmt.Errorf("%q: unknown routing; only token choice (top num_experts_per_tok experts per token) is supported", s))
		}
	}
}
