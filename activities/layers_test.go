package activities

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/store"
)

func randF32(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return v
}

// A block of one stage's layers: quantized q_proj (with a bias), grouped
// k_proj, and an adapter on o_proj's quantized base.
func stageLayers(t *testing.T) (base, comp *model.Block) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	const out, in, groups = 8, 16, 2
	base = &model.Block{}
	for _, mod := range model.Modules {
		*base.Linear(mod) = model.NewDense(out, in, randF32(rng, out*in), nil)
	}
	codes := make([]uint8, out*in)
	for i := range codes {
		codes[i] = uint8(rng.IntN(16))
	}
	zeros := make([]int32, groups*out)
	for i := range zeros {
		zeros[i] = int32(1 + rng.IntN(15))
	}
	gidx := make([]int32, in)
	for k := range gidx {
		gidx[k] = int32(k / (in / groups))
	}
	q, err := model.NewQuantized(out, in, 4, codes, randF32(rng, groups*out), zeros, gidx, randF32(rng, out))
	if err != nil {
		t.Fatal(err)
	}
	g, err := model.NewGrouped(model.NewDense(5, in, randF32(rng, 5*in), nil),
		[]*model.Dense{model.NewDense(out/2, 2, randF32(rng, out), nil), model.NewDense(out/2, 3, randF32(rng, out/2*3), nil)}, randF32(rng, out))
	if err != nil {
		t.Fatal(err)
	}
	// o_proj was quantized by an earlier stage: the adapter wraps it.
	oq, err := model.NewQuantized(out, in, 4, codes, randF32(rng, groups*out), zeros, gidx, nil)
	if err != nil {
		t.Fatal(err)
	}
	*base.Linear("self_attn.o_proj") = oq
	comp = &model.Block{}
	*comp = *base
	*comp.Linear("self_attn.q_proj") = q
	*comp.Linear("self_attn.k_proj") = g
	*comp.Linear("self_attn.o_proj") = &gptq.Adapted{Base: oq, A: model.NewDense(3, in, randF32(rng, 3*in), nil), B: model.NewDense(out, 3, randF32(rng, out*3), nil)}
	return base, comp
}

func TestLayersRoundTrip(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	base, comp := stageLayers(t)
	ref, err := putLayers(st, store.Key("layers", "test"), base, comp)
	if err != nil {
		t.Fatal(err)
	}
	back, err := getLayers(st, ref, base)
	if err != nil {
		t.Fatal(err)
	}
	for _, mod := range model.Modules {
		w, g := *comp.Linear(mod), *back.Linear(mod)
		if !reflect.DeepEqual(w, g) {
			t.Errorf("%s: stored %T differs after reading back (%T)", mod, w, g)
		}
	}
	// Unchanged layers are not stored: they come from base.
	if *back.Linear("mlp.up_proj") != *base.Linear("mlp.up_proj") {
		t.Errorf("an unchanged layer was replaced")
	}
	// An adapter must wrap the layer the stage started from.
	other := *base
	*other.Linear("self_attn.o_proj") = model.NewDense(8, 16, make([]float32, 128), nil)
	if _, err := putLayers(st, store.Key("layers", "bad"), &other, comp); err == nil {
		t.Errorf("an adapter over a layer the stage did not start from was stored")
	}
}

// Densify folds every layer type into a dense one that computes the same.
func TestDensifyLayers(t *testing.T) {
	k := kernels.Default()
	_, comp := stageLayers(t)
	m := &model.Model{Backend: k, Blocks: []*model.Block{comp}}
	d, err := Densify(m)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	const rows = 5
	x := randF32(rng, rows*16)
	for _, mod := range model.Modules {
		l, dl := *comp.Linear(mod), *d.Blocks[0].Linear(mod)
		if _, ok := dl.(*model.Dense); !ok {
			t.Fatalf("%s is %T after Densify", mod, dl)
		}
		want, got := make([]float32, rows*l.Out()), make([]float32, rows*l.Out())
		l.Apply(k, want, x, rows)
		dl.Apply(k, got, x, rows)
		for i := range want {
			if math.Abs(float64(want[i]-got[i])) > 1e-4*(1+math.Abs(float64(want[i]))) {
				t.Fatalf("%s (%T): output %d is %v dense, %v as stored", mod, l, i, got[i], want[i])
			}
		}
	}
	// A Palu layer with a quantized latent cache has no dense form.
	(*comp.Linear("self_attn.k_proj")).(*model.Grouped).LatentBits = 4
	if _, err := Densify(m); err == nil {
		t.Errorf("a Palu layer with 4-bit latents was densified")
	}
}
