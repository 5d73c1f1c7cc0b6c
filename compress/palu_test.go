package compress

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

func TestPaluFullRankReproduces(t *testing.T) {
	m, cal, ev := fixture(t, 4, 2)
	want, _ := m.Forward(ev)
	for _, g := range []int{1, 2, 4} {
		res, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: 1, GroupHeads: g, RankSearch: "uniform"})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := res.Model.Forward(ev)
		const tol = 1e-5
		if e := relErr(got, want); !(e < tol) {
			t.Errorf("groups of %d at full rank: logits differ by %.3g, want < %g", g, e, tol)
		}
		if res.KVBytes != res.KVBytesOrig {
			t.Errorf("full rank: %d KV bytes per token, original %d", res.KVBytes, res.KVBytesOrig)
		}
	}
}

// At the same KV budget, J-LRD ≤ G-LRD ≤ M-LRD in KL on stories260K, with
// uniform and with fisher ranks; and fisher beats uniform at every grouping
// (BenchmarkPaluTable shows it at kv_keep 0.75, 0.5 and 0.3).
func TestPaluCoarserGroupsNoWorse(t *testing.T) {
	m, cal, ev := fixture(t, 16, 4)
	kl := map[string][]float64{}
	for _, search := range []string{"uniform", "fisher"} {
		for _, g := range []int{1, 2, 4} {
			res, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: 0.5, GroupHeads: g, RankSearch: search})
			if err != nil {
				t.Fatal(err)
			}
			r := measure(t, m, res.Model, ev)
			t.Logf("%s, groups of %d heads: kl %.4f ppl %.2f kv bytes %d of %d", search, g, *r.KL, r.PPL, res.KVBytes, res.KVBytesOrig)
			if res.KVBytes != res.KVBytesOrig/2 {
				t.Errorf("%s: kv_keep 0.5 gave %d KV bytes per token of %d", search, res.KVBytes, res.KVBytesOrig)
			}
			kl[search] = append(kl[search], *r.KL)
		}
		k := kl[search]
		if !(k[2] <= k[1] && k[1] <= k[0]) {
			t.Errorf("%s: KL J-LRD %.4f, G-LRD %.4f, M-LRD %.4f: want J ≤ G ≤ M", search, k[2], k[1], k[0])
		}
	}
	for i, g := range []int{1, 2, 4} {
		if !(kl["fisher"][i] < kl["uniform"][i]) {
			t.Errorf("groups of %d: fisher KL %.4f, uniform %.4f: want fisher below", g, kl["fisher"][i], kl["uniform"][i])
		}
	}
}

func TestPaluBadOptions(t *testing.T) {
	m, cal, _ := fixture(t, 2, 0)
	for _, tc := range []struct {
		o    PaluOptions
		want string
	}{
		{PaluOptions{KVKeep: 0}, "kv_keep 0 must be in (0, 1]"},
		{PaluOptions{KVKeep: 1.2}, "kv_keep 1.2 must be in (0, 1]"},
		{PaluOptions{KVKeep: 0.5, GroupHeads: 3}, "group_size 3 does not divide the 4 KV heads"},
		{PaluOptions{KVKeep: 0.5, RankSearch: "hessian"}, `palu rank_search "hessian" unknown (want one of uniform, spectrum, fisher)`},
	} {
		_, err := RunPalu(context.Background(), m, cal, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RunPalu(%+v): error %v, want it to contain %q", tc.o, err, tc.want)
		}
	}
}

// BenchmarkPaluTable prints KL, perplexity and KV bytes per token for M-, G-
// and J-LRD at several KV budgets with uniform, spectrum and fisher ranks:
//
//	go test -run XXX -bench PaluTable -benchtime 1x ./compress/
func BenchmarkPaluTable(b *testing.B) {
	m, cal, ev := fixture(b, 128, 32)
	for b.Loop() {
		fmt.Printf("%-6s %-9s %7s %10s %10s %9s\n", "groups", "search", "kv_keep", "kl", "ppl", "kv bytes")
		for _, keep := range []float64{0.75, 0.5, 0.3} {
			for _, search := range PaluSearches {
				for _, g := range []int{1, 2, 4} {
					res, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: keep, GroupHeads: g, RankSearch: search})
					if err != nil {
						b.Fatal(err)
					}
					r := measure(b, m, res.Model, ev)
					fmt.Printf("%-6d %-9s %7.2f %10.4f %10.2f %4d/%-4d\n", g, search, keep, *r.KL, r.PPL, res.KVBytes, res.KVBytesOrig)
				}
			}
		}
	}
}

// Fisher ranks stay within [1, group rows] and spend uniform's budget: the
// same total rank, hence the same 16-bit cache, and with quantized latents
// no more bytes than uniform's.
func TestPaluFisherRanks(t *testing.T) {
	m, cal, _ := fixture(t, 8, 0)
	for _, g := range []int{1, 4} {
		for _, bits := range []int{0, 3} {
			o := PaluOptions{KVKeep: 0.5, GroupHeads: g, LatentBits: bits, LatentGroupSize: 8}
			o.RankSearch = "uniform"
			uni, err := RunPalu(context.Background(), m, cal, o)
			if err != nil {
				t.Fatal(err)
			}
			o.RankSearch = "fisher"
			fis, err := RunPalu(context.Background(), m, cal, o)
			if err != nil {
				t.Fatal(err)
			}
			rows := g * m.Config.HeadDim
			for name, rs := range fis.Ranks {
				for _, r := range rs {
					if r < 1 || r > rows {
						t.Errorf("groups of %d: %s has rank %d outside [1, %d]", g, name, r, rows)
					}
				}
			}
			t.Logf("groups of %d, %d-bit latents: fisher %d latent values, %d bytes; uniform %d, %d bytes; layer 0 k %v v %v",
				g, bits, fis.LatentPerTok, fis.KVBytes, uni.LatentPerTok, uni.KVBytes,
				fis.Ranks["model.layers.0.self_attn.k_proj"], fis.Ranks["model.layers.0.self_attn.v_proj"])
			if bits == 0 && (fis.LatentPerTok != uni.LatentPerTok || fis.KVBytes != uni.KVBytes) {
				t.Errorf("groups of %d: fisher caches %d values (%d bytes), uniform %d (%d bytes): want equal", g, fis.LatentPerTok, fis.KVBytes, uni.LatentPerTok, uni.KVBytes)
			}
			if fis.KVBytes > uni.KVBytes {
				t.Errorf("groups of %d, %d-bit latents: fisher caches %d bytes per token, more than uniform's %d", g, bits, fis.KVBytes, uni.KVBytes)
			}
		}
	}
}

func TestPaluAllocateByImportance(t *testing.T) {
	for _, tc := range []struct {
		imp             []float64
		capacity, total int
		want            []int
	}{
		{[]float64{1, 1, 1, 1}, 8, 16, []int{4, 4, 4, 4}},
		{[]float64{0, 0, 1, 3}, 8, 12, []int{1, 1, 3, 7}},             // zero importance keeps rank 1
		{[]float64{1000, 1}, 4, 6, []int{4, 2}},                       // capped, the excess moves on
		{[]float64{100, 1, 1, 1}, 8, 16, []int{8, 3, 3, 2}},           // leftover by largest remainder
		{[]float64{1, 2, 3}, 4, 20, []int{4, 4, 4}},                   // budget above the caps
		{[]float64{1, 2, 3}, 4, 2, []int{1, 1, 1}},                    // budget below one each
		{[]float64{0, 0, 0}, 4, 6, []int{2, 2, 2}},                    // no information: equal
		{[]float64{math.NaN(), 1, math.Inf(1)}, 4, 6, []int{1, 4, 1}}, // bad values count as zero
	} {
		got := allocateByImportance(tc.imp, tc.capacity, tc.total)
		if !slices.Equal(got, tc.want) {
			t.Errorf("allocateByImportance(%v, %d, %d) = %v, want %v", tc.imp, tc.capacity, tc.total, got, tc.want)
		}
	}
}

// The latent-cache decoder, which caches only the latents, gives the logits
// of the full forward pass of the same Palu-compressed model.
func TestPaluLatentDecoderMatchesForward(t *testing.T) {
	m, cal, ev := fixture(t, 8, 1)
	for _, g := range []int{1, 2} {
		res, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: 0.5, GroupHeads: g, RankSearch: "spectrum"})
		if err != nil {
			t.Fatal(err)
		}
		seq := ev[0][:48]
		want, err := res.Model.Forward([][]int32{seq})
		if err != nil {
			t.Fatal(err)
		}
		d := res.Model.NewDecoder()
		var got []float32
		for _, id := range seq {
			l, err := d.Step(id)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, l...)
		}
		const tol = 1e-5
		if e := relErr(got, want); !(e < tol) {
			t.Errorf("groups of %d: latent decoder differs from the full forward by %.3g, want < %g", g, e, tol)
		}
		if cached := d.CachedValues(); cached != len(seq)*res.KVBytes/2 {
			t.Errorf("groups of %d: the cache holds %d values for %d tokens, want %d (the latents only)", g, cached, len(seq), len(seq)*res.KVBytes/2)
		}
	}
}

func TestPaluExportRoundTrip(t *testing.T) {
	m, cal, ev := fixture(t, 4, 1)
	res, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: 0.5, GroupHeads: 2, RankSearch: "spectrum", LatentBits: 3, LatentGroupSize: 8, Hadamard: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := model.Save(res.Model, dir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	back, err := model.Load(dir, m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := res.Model.Forward(ev)
	b, _ := back.Forward(ev)
	if e := relErr(b, a); e != 0 {
		t.Errorf("palu checkpoint: logits differ by %.3g after save and load", e)
	}
	if back.KVBytesPerToken() != res.KVBytes {
		t.Errorf("loaded model caches %d bytes per token, saved one %d", back.KVBytesPerToken(), res.KVBytes)
	}
}

// The Hadamard rotation alone changes nothing; with quantized latents the KV
// bytes count the codes plus a float16 scale and zero per group.
func TestPaluHadamardAndLatentBits(t *testing.T) {
	m, cal, ev := fixture(t, 8, 2)
	run := func(o PaluOptions) (*PaluResult, float64) {
		o.KVKeep, o.GroupHeads, o.RankSearch = 0.5, 4, "uniform"
		res, err := RunPalu(context.Background(), m, cal, o)
		if err != nil {
			t.Fatal(err)
		}
		r := measure(t, m, res.Model, ev)
		t.Logf("bits %d hadamard %v: kl %.4f ppl %.2f kv bytes %d", o.LatentBits, o.Hadamard, *r.KL, r.PPL, res.KVBytes)
		return res, *r.KL
	}
	plain, _ := run(PaluOptions{})
	rotated, _ := run(PaluOptions{Hadamard: true})
	a, _ := plain.Model.Forward(ev)
	b, _ := rotated.Model.Forward(ev)
	if e := relErr(b, a); e > 1e-5 {
		t.Errorf("the Hadamard rotation changed the logits by %.3g", e)
	}
	q4, _ := run(PaluOptions{LatentBits: 4, Hadamard: true})
	// 5 layers × 2 matrices × latent 16: 16 values at 4 bits = 8 bytes + one group's scale and zero = 4 bytes.
	if want := 5 * 2 * (8 + 4); q4.KVBytes != want {
		t.Errorf("4-bit latents: %d KV bytes per token, want %d", q4.KVBytes, want)
	}
}

// BenchmarkPaluLatentTable prints the effect of 4- and 3-bit latents with and
// without the Hadamard rotation (J-LRD, fisher ranks):
//
//	go test -run XXX -bench PaluLatentTable -benchtime 1x ./compress/
func BenchmarkPaluLatentTable(b *testing.B) {
	m, cal, ev := fixture(b, 128, 32)
	for b.Loop() {
		fmt.Printf("%7s %4s %8s %10s %10s %9s\n", "kv_keep", "bits", "hadamard", "kl", "ppl", "kv bytes")
		for _, keep := range []float64{0.75, 0.5, 0.3} {
			for _, bits := range []int{0, 4, 3} {
				for _, h := range []bool{false, true} {
					if bits == 0 && h {
						continue
					}
					res, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: keep, GroupHeads: 4, RankSearch: "fisher", LatentBits: bits, Hadamard: h})
					if err != nil {
						b.Fatal(err)
					}
					r := measure(b, m, res.Model, ev)
					fmt.Printf("%7.2f %4d %8v %10.4f %10.2f %4d/%-4d\n", keep, bits, h, *r.KL, r.PPL, res.KVBytes, res.KVBytesOrig)
				}
			}
		}
	}
}

// Palu's own layout (VT / U.{j}, head_wise_ranks, model_type palullama) is
// read back exactly, and a model read from it saves natively again.
func TestPaluLayoutRoundTrip(t *testing.T) {
	m, cal, ev := fixture(t, 8, 1)
	res, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: 0.5, GroupHeads: 2})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := model.SavePalu(res.Model, dir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatal(err)
	}
	if c["model_type"] != "palullama" || c["head_wise_ranks"] == nil || c["rankzip"] != nil {
		t.Errorf("config.json: model_type %v, head_wise_ranks %v, rankzip %v", c["model_type"], c["head_wise_ranks"], c["rankzip"])
	}
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"model.layers.0.self_attn.k_proj.VT.weight", "model.layers.4.self_attn.v_proj.U.1.weight"} {
		if _, ok := ck.Info(name); !ok {
			t.Errorf("no tensor %s in Palu's layout", name)
		}
	}
	ck.Close()
	back, err := model.Load(dir, m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := res.Model.Forward(ev)
	got, _ := back.Forward(ev)
	if e := relErr(got, want); e != 0 {
		t.Errorf("Palu layout: logits differ by %.3g after save and load", e)
	}
	native := t.TempDir()
	if err := model.Save(back, native, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	again, err := model.Load(native, m.Backend)
	if err != nil {
		t.Fatal(err)
	}
	if got2, _ := again.Forward(ev); relErr(got2, want) != 0 {
		t.Errorf("Palu layout re-saved natively: logits differ")
	}
	q, err := RunPalu(context.Background(), m, cal, PaluOptions{KVKeep: 0.5, GroupHeads: 2, LatentBits: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := model.SavePalu(q.Model, t.TempDir(), safetensors.F32); err == nil || !strings.Contains(err.Error(), "4 bits") {
		t.Errorf("Palu layout of 4-bit latents: %v", err)
	}
}
