package compress

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
)

// The block-by-block gradient pass gives, on stories260K, the Fisher sums
// and Palu's group sums that the whole-model Backward gives batch by batch,
// bit for bit; a batch with nothing to predict is skipped by both; and each
// block's streams are the inputs the block saw.
func TestGradientPassMatchesBackward(t *testing.T) {
	m, cal, _ := fixture(t, 8, 0)
	for i := range cal {
		cal[i] = cal[i][:min(len(cal[i]), 48)]
	}
	seqs := append(cal, []int32{5}, []int32{7}) // the last batch predicts nothing
	const batch = 4
	mods := []string{"self_attn.k_proj", "mlp.down_proj"}
	var names []string
	for l := range m.Blocks {
		for _, mod := range mods {
			names = append(names, model.ModuleName(l, mod))
		}
	}
	want := map[string][]float64{}
	used := 0
	for _, b := range splitBatches(seqs, batch) {
		if !predicts(b) {
			continue
		}
		g, err := m.Backward(b, names)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if want[n] == nil {
				want[n] = make([]float64, len(g.Grads[n].Weight))
			}
			addFisher(want[n], g.Tokens, g.Grads[n].Weight)
		}
		used++
	}
	if used != 2 {
		t.Fatalf("%d batches predict something, want 2", used)
	}

	got := map[string][]float64{}
	var order []int
	h, err := m.GradEmbed(seqs[:batch])
	if err != nil {
		t.Fatal(err)
	}
	inputs := []*model.States{h} // the first batch's input of each block
	for l := range m.Blocks[:len(m.Blocks)-1] {
		if h, err = m.GradForward(l, m.Blocks[l], h); err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, h)
	}
	dir := t.TempDir()
	err = gradientPass(context.Background(), Whole(m), seqs, batch, mods, dir, "test",
		func(tokens int, g map[string]*model.Grad) {
			for n, gr := range g {
				if got[n] == nil {
					got[n] = make([]float64, len(gr.Weight))
				}
				addFisher(got[n], tokens, gr.Weight)
			}
		},
		func(l int, b *model.Block, in *calib.Streams) error {
			order = append(order, l)
			if b != m.Blocks[l] || len(in.Orig) != 3 || !slices.Equal(in.Orig[0].X, inputs[l].X) {
				t.Errorf("block %d: done got another block or other inputs (%d batches)", l, len(in.Orig))
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if !slices.Equal(got[n], want[n]) {
			t.Errorf("%s: Fisher sum differs between the block pass and Backward", n)
		}
	}
	if !slices.Equal(order, []int{4, 3, 2, 1, 0}) {
		t.Errorf("blocks done in order %v, want the last first", order)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the stash left %d files in %s", len(left), dir)
	}

	// Palu's importance by the block pass against Backward's gradients.
	kv := []string{"model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"}
	for l := 1; l < len(m.Blocks); l++ {
		kv = append(kv, model.ModuleName(l, "self_attn.k_proj"), model.ModuleName(l, "self_attn.v_proj"))
	}
	const groups = 2
	imp, err := fisherImportance(context.Background(), Whole(m), seqs, batch, dir, kv, groups)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range kv {
		ref := make([]float64, groups)
		for _, b := range splitBatches(seqs, batch)[:2] {
			g, err := m.Backward(b, []string{n})
			if err != nil {
				t.Fatal(err)
			}
			w := g.Grads[n].Weight
			per := len(w) / groups
			for j := range groups {
				var s float64
				for _, x := range w[j*per : (j+1)*per] {
					s += float64(x) * float64(x)
				}
				ref[j] += s
			}
		}
		if !slices.Equal(imp[i], ref) {
			t.Errorf("%s: importance %v by the block pass, %v by Backward", n, imp[i], ref)
		}
	}
}

// readLog is a Source over m that records which blocks are read, and fails
// on block fail (-1: never).
func readLog(m *model.Model, fail int) (Source, *[]int) {
	var reads []int
	src := Whole(m)
	read := src.Block
	src.Block = func(l int) (*model.Block, error) {
		reads = append(reads, l)
		if l == fail {
			return nil, errors.New("disk gone")
		}
		return read(l)
	}
	return src, &reads
}

// A fisher plan reads each block twice, in turn: forward, then backward
// from the last (so it holds one at a time), plus block 0 for the shapes;
// global and uniform plans read them once or not at all; a failed read is
// the plan's error.
func TestPlanReadsOneBlockAtATime(t *testing.T) {
	m, cal, _ := fixture(t, 8, 0)
	for _, c := range []struct {
		search string
		reads  []int
	}{
		{"fisher", []int{0, 0, 1, 2, 3, 4, 4, 3, 2, 1, 0}},
		{"global", []int{0, 0, 1, 2, 3, 4}},
		{"uniform", []int{0}},
	} {
		src, reads := readLog(m, -1)
		if _, err := NewPlan(context.Background(), src, cal, Options{Method: "whiten", KeepParams: 0.8, RankSearch: c.search, Spill: t.TempDir()}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(*reads, c.reads) {
			t.Errorf("%s: blocks read %v, want %v", c.search, *reads, c.reads)
		}
	}
	src, _ := readLog(m, 3)
	_, err := NewPlan(context.Background(), src, cal, Options{Method: "whiten", KeepParams: 0.8, RankSearch: "fisher"})
	if err == nil || !strings.Contains(err.Error(), "disk gone") {
		t.Errorf("plan with block 3 unreadable: error %v, want the read's", err)
	}
}
