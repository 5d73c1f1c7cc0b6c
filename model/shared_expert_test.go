package model

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/rankzip/rankzip/kernels"
)

// Qwen2-MoE's shared expert is a target: its modules are named
// mlp.shared_expert.<linear>, shaped by shared_expert_intermediate_size,
// selected by globs, cloned apart from the source block, carried by a
// block diff and multiplied back by Densify.
func TestQwen2MoESharedExpertModules(t *testing.T) {
	m, err := Synthetic(SyntheticConfig{ModelType: "qwen2_moe", Hidden: 64, Intermediate: 48, Layers: 1, Heads: 4, KVHeads: 2,
		Vocab: 32, MaxPositions: 16, Experts: 4, TopK: 2}, 1, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	c := m.Config
	for j, want := range []string{"mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"} {
		if got := ExpertModule(SharedExpert, j); got != want {
			t.Errorf("ExpertModule(SharedExpert, %d) = %q, want %q", j, got, want)
		}
		if e, jj, ok := ParseExpertModule(want); !ok || e != SharedExpert || jj != j {
			t.Errorf("ParseExpertModule(%q) = %d, %d, %v", want, e, jj, ok)
		}
	}
	if _, _, ok := ParseExpertModule("mlp.shared_expert_gate"); ok {
		t.Error("the shared expert's gate parsed as a target")
	}
	if out, in := c.ModuleShape("mlp.shared_expert.down_proj"); out != 64 || in != 96 {
		t.Errorf("shared down_proj shape %d×%d, want 64×96 (shared_expert_intermediate_size)", out, in)
	}
	mods, problems := c.MatchTargets([]string{"mlp.shared_expert.*"})
	if len(problems) > 0 || !slices.Equal(mods, []string{"mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj", "mlp.shared_expert.down_proj"}) {
		t.Errorf("mlp.shared_expert.* selects %v (%v)", mods, problems)
	}
	if all := c.TargetModules(); len(all) != 4+4*3+3 {
		t.Errorf("%d target modules, want the 4 attention, 12 routed-expert and 3 shared-expert linears", len(all))
	}

	base := m.Blocks[0]
	comp := *base
	comp.MoE = base.MoE.Clone()
	fac := &Factored{A: NewDense(5, 96, seq(5*96, 0.01), nil), B: NewDense(64, 5, seq(64*5, -0.02), nil)}
	*comp.Linear("mlp.shared_expert.down_proj") = fac
	if _, dense := base.MoE.Shared.Down.(*Dense); !dense {
		t.Fatal("replacing the clone's shared expert changed the source block's")
	}
	p := filepath.Join(t.TempDir(), "diff.safetensors")
	if err := WriteBlockDiff(p, base, &comp); err != nil {
		t.Fatal(err)
	}
	back, err := ReadBlockDiff(p, base)
	if err != nil {
		t.Fatal(err)
	}
	if !sameLinear(t, back.MoE.Shared.Down, fac) || back.MoE.Shared.Gate != base.MoE.Shared.Gate {
		t.Errorf("block diff read back the shared expert as %T/%T", back.MoE.Shared.Gate, back.MoE.Shared.Down)
	}
	cm := *m
	cm.Blocks = []*Block{&comp}
	seqs := [][]int32{{1, 5, 9, 3, 7, 2}}
	want, err := cm.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	d := Densify(&cm)
	if _, dense := d.Blocks[0].MoE.Shared.Down.(*Dense); !dense {
		t.Fatalf("Densify left the shared down_proj %T", d.Blocks[0].MoE.Shared.Down)
	}
	got, err := d.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	if e := refRelErr(got, convert[float64](want)); !(e < 1e-5) {
		t.Errorf("Densify changed the logits by %.2e", e)
	}
}
