package model

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model/safetensors"
)

// losslessMLA returns m (a bias-free GQA model) with every attention layer
// rewritten exactly as MLA: the rope key carries every original key (KV
// head g's rotate-half pair (j, j+d/2) becomes interleaved pair g·d/2+j with
// the original frequency), the latent carries every value, k_nope is zero
// and each query head reads its KV group's rope dims. q is scaled by
// √(d+RopeDim)/√d to undo MLA's softmax scale.
func losslessMLA(t testing.TB, m *Model) *Model {
	t.Helper()
	c := m.Config
	d, kvh, heads, hid := c.HeadDim, c.NumKVHeads, c.NumHeads, c.HiddenSize
	half, group := d/2, heads/kvh
	r, l, n, v := kvh*d, kvh*d, d, d
	inv := c.InvFreq()
	s := float32(math.Sqrt(float64(n+r)) / math.Sqrt(float64(d)))
	out := *m
	out.Blocks = nil
	for _, b := range m.Blocks {
		wq, wk, wv := b.Q.(*Dense).Weight, b.K.(*Dense).Weight, b.V.(*Dense).Weight
		row := func(w []float32, i int) []float32 { return w[i*hid : (i+1)*hid] }
		kva := make([]float32, (l+r)*hid)
		copy(kva, wv)
		freq := make([]float64, r/2)
		for g := range kvh {
			for j := range half {
				i := g*half + j
				copy(kva[(l+2*i)*hid:], row(wk, g*d+j))
				copy(kva[(l+2*i+1)*hid:], row(wk, g*d+j+half))
				freq[i] = inv[j]
			}
		}
		kvb := make([]float32, heads*(n+v)*l)
		q := make([]float32, heads*(n+r)*hid)
		for h := range heads {
			g, base := h/group, h*(n+v)
			for t := range v {
				kvb[(base+n+t)*l+g*d+t] = 1
			}
			base = h * (n + r)
			for t := range n {
				copy(q[(base+t)*hid:], row(wq, h*d+t))
			}
			for j := range half {
				i := g*half + j
				copy(q[(base+n+2*i)*hid:], row(wq, h*d+j))
				copy(q[(base+n+2*i+1)*hid:], row(wq, h*d+j+half))
			}
		}
		for i := range q {
			q[i] *= s
		}
		nb := *b
		nb.K, nb.V = nil, nil
		nb.Q = NewDense(heads*(n+r), hid, q, nil)
		nb.MLA = &MLA{KVA: NewDense(l+r, hid, kva, nil), KVB: NewDense(heads*(n+v), l, kvb, nil),
			LoraRank: l, RopeDim: r, NopeDim: n, VDim: v, RopeFreq: freq}
		out.Blocks = append(out.Blocks, &nb)
	}
	return &out
}

// fixtureMLA loads stories260K and its lossless MLA form.
func fixtureMLA(t testing.TB) (orig, mla *Model, seqs [][]int32) {
	t.Helper()
	m, err := Load(needFixture(t, "stories260K"), kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	rows := readJSONL(t, needFixture(t, "samples/eval.jsonl"), 3)
	// Unequal lengths: the batch layout must keep sequences apart.
	return m, losslessMLA(t, m), [][]int32{rows[0][:64], rows[1][:23], rows[2][:100]}
}

func forward(t testing.TB, m *Model, seqs [][]int32) []float32 {
	t.Helper()
	l, err := m.Forward(seqs)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// GQA rewritten as MLA at full rank gives the original logits, in the plain
// and in the absorbed form.
func TestMLALosslessConversion(t *testing.T) {
	orig, mla, seqs := fixtureMLA(t)
	want := forward(t, orig, seqs)
	got := forward(t, mla, seqs)
	mla.AbsorbMLA = true
	abs := forward(t, mla, seqs)
	const tol = 1e-5
	e1, e2, e3 := relErr(got, want), relErr(abs, want), relErr(abs, got)
	t.Logf("relative error: plain MLA vs GQA %.3g, absorbed vs GQA %.3g, absorbed vs plain %.3g", e1, e2, e3)
	if !(e1 < tol) || !(e2 < tol) || !(e3 < tol) {
		t.Errorf("lossless MLA differs: plain vs GQA %.3g, absorbed vs GQA %.3g, absorbed vs plain %.3g, want < %g", e1, e2, e3, tol)
	}
	// 5 blocks of norms 128, q 320×64, kv_a 64×64, kv_b 128×32, o 64×64, MLP 3×64×172; tied embeddings.
	if got, want := mla.NumParams(), int64(512*64+64+5*(128+320*64+64*64+128*32+64*64+3*64*172)); got != want {
		t.Errorf("NumParams %d, want %d", got, want)
	}
	mla.AbsorbMLA = false
	if e := relErr(forward(t, Densify(mla), seqs), got); e != 0 {
		t.Errorf("Densify changed an MLA model's logits by %.3g", e)
	}
}

// randomMLA is a synthetic MLA model with a latent smaller than the heads'
// keys and values, kv_a_layernorm, VDim ≠ NopeDim and biases on kv_a and
// kv_b (the absorbed form drops the k_nope bias, which softmax cancels).
func randomMLA(t testing.TB) *Model {
	t.Helper()
	m, err := Synthetic(SyntheticConfig{Hidden: 32, Intermediate: 48, Layers: 2, Heads: 4, KVHeads: 4, Vocab: 64, MaxPositions: 1024,
		MLA: &MLAConfig{LoraRank: 12, RopeDim: 8, NopeDim: 6, VDim: 10, LatentNorm: true}}, 3, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range m.Blocks {
		a := b.MLA
		a.KVA.Bias = make([]float32, a.KVA.Out())
		a.KVB.Bias = make([]float32, a.KVB.Out())
		for j := range a.KVA.Bias {
			a.KVA.Bias[j] = 0.1 * float32(math.Sin(float64(i+3*j)))
		}
		for j := range a.KVB.Bias {
			a.KVB.Bias[j] = 0.2 * float32(math.Cos(float64(i+5*j)))
		}
	}
	return m
}

func TestMLAAbsorbedMatchesPlain(t *testing.T) {
	m := randomMLA(t)
	long := make([]int32, 600) // past smallAttention: the Sgemm path in both forms
	for i := range long {
		long[i] = int32((i*i + 7*i) % 64)
	}
	seqs := [][]int32{{1, 5, 9, 2, 2, 40, 63, 0, 17}, long, {3}}
	plain := forward(t, m, seqs)
	m.AbsorbMLA = true
	abs := forward(t, m, seqs)
	const tol = 1e-5
	e := relErr(abs, plain)
	t.Logf("random MLA (rank 12 < 4 heads × (6+10), latent norm, biases): absorbed vs plain %.3g", e)
	if !(e < tol) {
		t.Errorf("absorbed form differs from the plain form by %.3g, want < %g", e, tol)
	}
	// A batch equals its sequences run one by one.
	m.AbsorbMLA = false
	var one []float32
	for _, s := range seqs {
		one = append(one, forward(t, m, [][]int32{s})...)
	}
	if e := relErr(one, plain); !(e < 1e-6) {
		t.Errorf("batched MLA forward differs from one sequence at a time by %.3g", e)
	}
}

// decode runs seq through a fresh decoder and returns every step's logits.
func decode(t testing.TB, m *Model, seq []int32) []float32 {
	t.Helper()
	d := m.NewDecoder()
	var got []float32
	for _, id := range seq {
		l, err := d.Step(id)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, l...)
	}
	return got
}

func TestMLADecoderMatchesForward(t *testing.T) {
	const tol = 1e-5
	orig, mla, seqs := fixtureMLA(t)
	seq := seqs[0]
	e := relErr(decode(t, mla, seq), forward(t, mla, [][]int32{seq}))
	t.Logf("lossless MLA: decoder vs forward %.3g", e)
	if !(e < tol) {
		t.Errorf("MLA decoder differs from the forward by %.3g, want < %g", e, tol)
	}
	if got, want := mla.KVBytesPerToken(), (32+32)*2*len(mla.Blocks); got != want {
		t.Errorf("KV bytes per token %d, want %d", got, want)
	}
	d := mla.NewDecoder()
	d.Step(seq[0])
	d.Step(seq[1])
	if got := d.CachedValues(); got != 2*64*len(mla.Blocks) {
		t.Errorf("cache holds %d values after 2 tokens, want %d (latent + rope key per layer)", got, 2*64*len(mla.Blocks))
	}
	if g, w := decode(t, mla, seq[:8]), forward(t, orig, [][]int32{seq[:8]}); !(relErr(g, w) < tol) {
		t.Errorf("MLA decoder differs from the original GQA model by %.3g", relErr(g, w))
	}

	m := randomMLA(t)
	seq = []int32{1, 5, 9, 2, 2, 40, 63, 0, 17, 33, 8}
	e = relErr(decode(t, m, seq), forward(t, m, [][]int32{seq}))
	t.Logf("random MLA: decoder vs forward %.3g", e)
	if !(e < tol) {
		t.Errorf("random MLA decoder differs from the forward by %.3g, want < %g", e, tol)
	}
	if got := m.KVBytesPerToken(); got != 2*(12+8)*2 {
		t.Errorf("random MLA: KV bytes per token %d, want %d", got, 2*(12+8)*2)
	}
}

// Taps see the block input and the heads·VDim attention output.
func TestMLATaps(t *testing.T) {
	m := randomMLA(t)
	h, err := m.EmbedTokens([][]int32{{1, 2, 3}, {4, 5}})
	if err != nil {
		t.Fatal(err)
	}
	var sites []Site
	m.RunBlock(m.Blocks[0], h, func(site Site, x []float32, rows, cols int) bool {
		sites = append(sites, site)
		want := map[Site]int{AttnInput: 32, OInput: 4 * 10, MLPInput: 32, DownInput: 48}[site]
		if rows != 5 || cols != want || len(x) != rows*cols {
			t.Errorf("tap %d: %d×%d (%d values), want 5×%d", site, rows, cols, len(x), want)
		}
		return true
	})
	if !slices.Equal(sites, []Site{AttnInput, OInput, MLPInput, DownInput}) {
		t.Errorf("taps saw %v", sites)
	}
}

// Bad MLA blocks and sliding windows are errors naming the layer, not panics.
func TestMLAInvalid(t *testing.T) {
	m := randomMLA(t)
	m.Config.SlidingWindow = 4
	if _, err := m.Forward([][]int32{{1, 2}}); err == nil || !strings.Contains(err.Error(), "sliding-window") {
		t.Errorf("sliding window with MLA: %v", err)
	}
	m = randomMLA(t)
	m.Blocks[1].MLA.RopeFreq = m.Blocks[1].MLA.RopeFreq[:1]
	if _, err := m.Forward([][]int32{{1, 2}}); err == nil || !strings.Contains(err.Error(), "layer 1 MLA") {
		t.Errorf("short RopeFreq: %v", err)
	}
	if _, err := m.NewDecoder().Step(1); err == nil {
		t.Error("decoder accepted a bad MLA block")
	}
	// Some blocks MLA, others not: no DeepSeek layout.
	orig, mla, _ := fixtureMLA(t)
	mixed := *mla
	mixed.Blocks = append([]*Block{orig.Blocks[0]}, mla.Blocks[1:]...)
	if err := Save(&mixed, t.TempDir(), safetensors.F32); err == nil || !strings.Contains(err.Error(), "layer 1") {
		t.Errorf("save of mixed blocks: %v", err)
	}
	// A frequency that no RoPE of the config has.
	odd := losslessMLA(t, orig)
	for _, b := range odd.Blocks {
		b.MLA.RopeFreq = slices.Clone(b.MLA.RopeFreq)
		b.MLA.RopeFreq[0] *= 1.5
	}
	if err := Save(odd, t.TempDir(), safetensors.F32); err == nil || !strings.Contains(err.Error(), "rope frequency 0") {
		t.Errorf("save with a foreign rope frequency: %v", err)
	}
}

func TestMLASaveLoad(t *testing.T) {
	_, mla, seqs := fixtureMLA(t)
	dir := t.TempDir()
	if err := Save(mla, dir, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"model_type": "deepseek_v3", "num_key_value_heads": 8.0, "num_attention_heads": 8.0, "kv_lora_rank": 32.0,
		"qk_rope_head_dim": 32.0, "qk_nope_head_dim": 8.0, "v_head_dim": 8.0, "head_dim": 32.0, "q_lora_rank": nil,
		"n_routed_experts": nil, "first_k_dense_replace": 5.0, "rope_interleave": true, "qk_latent_layernorm": false,
		"attention_bias": false,
	} {
		got, ok := cfg[k]
		if !ok || !jsonEqual(got, want) {
			t.Errorf("config.json %q = %v (present %v), want %v", k, got, ok, want)
		}
	}
	if a, _ := cfg["architectures"].([]any); len(a) != 1 || a[0] != "DeepseekV3ForCausalLM" {
		t.Errorf("architectures = %v", cfg["architectures"])
	}
	sec, _ := cfg[NativeSection].(map[string]any)
	idx := []any{0.0, 1.0, 2.0, 3.0}
	if sec["format"] != "deepseek-mla" || sec["mla_rope_source_head_dim"] != 8.0 ||
		!jsonEqual(sec["mla_rope_freq_index"], slices.Concat(idx, idx, idx, idx)) {
		t.Errorf("rankzip section %v", sec)
	}
	back, err := Load(dir, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	if c := back.Config.MLA; c == nil || c.LatentNorm || c.LoraRank != 32 || back.Blocks[2].MLA.KVANorm != nil ||
		!slices.Equal(back.Blocks[2].MLA.RopeFreq, mla.Blocks[2].MLA.RopeFreq) {
		t.Fatalf("loaded MLA config %+v", back.Config.MLA)
	}
	if e := relErr(forward(t, back, seqs), forward(t, mla, seqs)); e != 0 {
		t.Errorf("logits after an f32 save and load differ by %.3g, want identical", e)
	}
	if back.KVBytesPerToken() != back.Config.KVBytesPerToken() || back.NumParams() != back.Config.NumParams() {
		t.Errorf("loaded model: KV bytes %d vs config %d; params %d vs config %d",
			back.KVBytesPerToken(), back.Config.KVBytesPerToken(), back.NumParams(), back.Config.NumParams())
	}
	// Saving the loaded model again keeps the layout and the frequencies.
	dir2 := t.TempDir()
	if err := Save(back, dir2, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	again, err := Load(dir2, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	if e := relErr(forward(t, again, seqs[:1]), forward(t, mla, seqs[:1])); e != 0 {
		t.Errorf("second round trip: logits differ by %.3g", e)
	}

	// A model with kv_a_layernorm, biases and stock DeepSeek frequencies.
	m := randomMLA(t)
	for _, b := range m.Blocks {
		b.MLA.KVB.Bias = nil // the DeepSeek layout has none
		b.O.(*Dense).Bias = make([]float32, b.O.Out())
		b.O.(*Dense).Bias[3] = 0.5
	}
	dir3 := t.TempDir()
	if err := Save(m, dir3, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	rnd, err := Load(dir3, kernels.Default())
	if err != nil {
		t.Fatal(err)
	}
	seq := [][]int32{{1, 5, 9, 2, 2, 40, 63, 0}}
	if e := relErr(forward(t, rnd, seq), forward(t, m, seq)); e != 0 {
		t.Errorf("random MLA with norm and biases: logits after save and load differ by %.3g", e)
	}
	if rnd.Config.MLA.RopeSourceHeadDim != 8 || !rnd.Config.MLA.LatentNorm || !rnd.Config.QKVBias {
		t.Errorf("random MLA config after load: %+v", rnd.Config.MLA)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

const deepseek = `"model_type": "deepseek_v3", "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
	"num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 512, "max_position_embeddings": 512,
	"kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8, "rope_theta": 10000`

func TestParseDeepSeekConfig(t *testing.T) {
	c, err := ParseConfig("c.json", []byte(`{`+deepseek+`, "q_lora_rank": null, "n_routed_experts": 4, "first_k_dense_replace": 2}`))
	if err != nil {
		t.Fatal(err)
	}
	a := c.MLA
	if a == nil || a.LoraRank != 16 || a.RopeDim != 8 || a.NopeDim != 8 || a.VDim != 8 || !a.LatentNorm || c.HeadDim != 8 ||
		a.RopeSourceHeadDim != 8 || !slices.Equal(a.RopeFreqIndex, []int{0, 1, 2, 3}) {
		t.Fatalf("stock DeepSeek config parsed as %+v / %+v", c, a)
	}
	for i, f := range c.MLARopeFreq() {
		if want := 1 / math.Pow(10000, float64(2*i)/8); f != want {
			t.Errorf("rope frequency %d = %g, want %g", i, f, want)
		}
	}
	if c.KVBytesPerToken() != 2*2*(16+8) {
		t.Errorf("config KV bytes %d", c.KVBytesPerToken())
	}
	c, err = ParseConfig("c.json", []byte(`{`+deepseek+`, "model_type": "deepseek_v2", "qk_latent_layernorm": false,
		"rankzip": {"format": "deepseek-mla", "mla_rope_source_head_dim": 16, "mla_rope_freq_index": [7, 0, 0, 3]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if inv := (&Config{HeadDim: 16, RopeTheta: 10000}).InvFreq(); c.MLA.LatentNorm ||
		!slices.Equal(c.MLARopeFreq(), []float64{inv[7], inv[0], inv[0], inv[3]}) {
		t.Errorf("TransMLA / rankzip config parsed as %+v, frequencies %v", c.MLA, c.MLARopeFreq())
	}
}

func TestParseDeepSeekConfigRefusals(t *testing.T) {
	for _, tc := range []struct{ extra, field string }{
		{`"q_lora_rank": 32`, "q_lora_rank"},
		{`"n_routed_experts": 8, "first_k_dense_replace": 1`, "n_routed_experts"},
		{`"rope_scaling": {"type": "yarn", "factor": 40}`, "rope_scaling.type"},
		{`"rope_scaling": {"rope_type": "deepseek_yarn", "factor": 40}`, "rope_scaling.rope_type"},
		{`"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000, "factor": 40, "mscale_all_dim": 1}`, "rope_parameters.rope_type"},
		{`"rope_parameters": {"rope_type": "default", "rope_theta": 10000, "mscale_all_dim": 1}`, "rope_parameters.mscale_all_dim"},
		{`"rope_interleave": false`, "rope_interleave"},
		{`"qk_rope_head_dim": 7`, "qk_rope_head_dim"},
		{`"num_key_value_heads": 4`, "num_key_value_heads"},
		{`"sliding_window": 128`, "sliding_window"},
		{`"kv_lora_rank": null`, "kv_lora_rank"},
		{`"rankzip": {"format": "deepseek-mla", "mla_rope_source_head_dim": 8, "mla_rope_freq_index": [0, 1, 2, 4]}`, "rankzip.mla_rope_freq_index"},
		{`"rankzip": {"format": "deepseek-mla", "mla_rope_source_head_dim": 8, "mla_rope_freq_index": [0, 1]}`, "rankzip.mla_rope_freq_index"},
		{`"rankzip": {"format": "deepseek-mla", "mla_rope_source_head_dim": 5, "mla_rope_freq_index": [0, 1, 2, 0]}`, "rankzip.mla_rope_source_head_dim"},
		{`"rankzip": {"format": "native", "mla_rope_source_head_dim": 8}`, "rankzip"},
		{`"rankzip": {"format": "deepseek-mla", "mla_rope_source_head_dim": 8, "mla_rope_freq_index": [0, 1, 2, 3], "mla_layer_rope_freq_index": [[0, 1, 2, 3]]}`, "rankzip.mla_layer_rope_freq_index"},
		{`"rankzip": {"format": "deepseek-mla", "mla_rope_source_head_dim": 8, "mla_rope_freq_index": [0, 1, 2, 3], "mla_layer_rope_freq_index": [[0, 1, 2, 3], [0, 1, 2, 9]]}`, "rankzip.mla_layer_rope_freq_index"},
	} {
		// Later keys win in encoding/json, so extra overrides the base.
		_, err := ParseConfig("c.json", []byte(`{`+deepseek+`, `+tc.extra+`}`))
		var ce *ConfigError
		if err == nil || !asConfigError(err, &ce) || ce.Field != tc.field {
			t.Errorf("%s: error %v, want a ConfigError on field %q", tc.extra, err, tc.field)
		}
	}
	_, err := ParseConfig("c.json", []byte(`{"model_type": "llama", `+base+`, "rankzip": {"format": "deepseek-mla"}}`))
	if err == nil || !strings.Contains(err.Error(), `needs model_type deepseek_v2 or deepseek_v3`) {
		t.Errorf("deepseek-mla section on a llama config: %v", err)
	}
}

func asConfigError(err error, ce **ConfigError) bool {
	c, ok := err.(*ConfigError)
	*ce = c
	return ok
}

func BenchmarkMLADecodeStep(b *testing.B) {
	m, err := Synthetic(SyntheticConfig{Hidden: 256, Intermediate: 512, Layers: 2, Heads: 8, KVHeads: 8, Vocab: 256, MaxPositions: 4096,
		MLA: &MLAConfig{LoraRank: 128, RopeDim: 32, NopeDim: 32, VDim: 32}}, 1, kernels.Default())
	if err != nil {
		b.Fatal(err)
	}
	d := m.NewDecoder()
	for range 256 {
		if _, err := d.Step(1); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N && d.Len() < 4096; i++ {
		if _, err := d.Step(int32(i % 256)); err != nil {
			b.Fatal(err)
		}
	}
}
