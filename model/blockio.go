package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/rankzip/rankzip/model/safetensors"
)

// A block-diff file is a safetensors file holding the linears a compression
// stage changed in one block, relative to the block it started from; the
// store keeps one per stage and block, and export applies them in order. Two
// forms share one tensor layout, by module name <m>:
//
//	factored   <m>.A F32 [rank, in], <m>.B F32 [out, rank], <m>.B.bias F32 [out]
//	dense      <m>.weight F32 [out, in], <m>.bias F32 [out]
//	quantized  <m>.q U8 [out, in], <m>.scales F32 [groups, out], <m>.zeros I32, <m>.g_idx I32 [in], <m>.bias F32
//	grouped    <m>.down F32 [latent, in], <m>.up.<j> F32 [out/G, r_j], <m>.bias F32
//	adapter    <m>.lora_A F32 [r, in], <m>.lora_B F32 [out, r]   (wraps the layer the stage started from)
//
// A mixture-of-experts block's expert linears are stored under their target
// names, mlp.experts.<e>.gate_proj, up_proj and down_proj (diffModules).
//
// A diff of factored and dense layers only (the low-rank stages) has metadata
// {"rankzip": "block"}, the layer types read from the tensor names; any other
// has {"rankzip": "layers", "layers": {module: layerMeta}}. An mla stage
// replaces q_proj, k_proj and v_proj by latent attention: metadata "mla"
// holds mlaMeta, and the tensors are mla.q_proj (+ .bias), mla.kv_a (+
// .bias), mla.kv_a_norm (optional) and mla.kv_b.

type layerMeta struct {
	Type        string `json:"type"` // factored | dense | quantized | grouped | adapter
	Bits        int    `json:"bits,omitempty"`
	Groups      int    `json:"groups,omitempty"` // grouped: up-projections
	LatentBits  int    `json:"latent_bits,omitempty"`
	LatentGroup int    `json:"latent_group,omitempty"`
}

// mlaMeta is the shape and rope frequencies of a stored MLA block.
type mlaMeta struct {
	LoraRank int       `json:"lora_rank"`
	RopeDim  int       `json:"rope_dim"`
	NopeDim  int       `json:"nope_dim"`
	VDim     int       `json:"v_dim"`
	RopeFreq []float64 `json:"rope_freq"` // exact: JSON keeps float64 round trips
}

// blockWriter gathers the tensors of a block-diff file.
type blockWriter struct{ ts []safetensors.WriteTensor }

func (w *blockWriter) f32(name string, shape []int, v []float32) {
	if v != nil {
		w.ts = append(w.ts, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape, Fill: safetensors.FillF32(v)})
	}
}

// quantizedTensors are a quantized layer's codes, scales, zero points and
// group indices (not its bias), stored exactly: codes and zero points as
// integers, scales in float32. Export names them the same way.
func quantizedTensors(name string, d *Quantized) []safetensors.WriteTensor {
	return []safetensors.WriteTensor{
		{Name: name + ".q", DType: safetensors.U8, Shape: []int{d.out, d.in}, Data: d.Q},
		{Name: name + ".scales", DType: safetensors.F32, Shape: []int{d.Groups(), d.out}, Data: f32Bytes(d.Scales)},
		{Name: name + ".zeros", DType: safetensors.I32, Shape: []int{d.Groups(), d.out}, Data: i32Bytes(d.Zeros)},
		{Name: name + ".g_idx", DType: safetensors.I32, Shape: []int{d.in}, Data: i32Bytes(d.GIdx)},
	}
}

// linear adds the tensors of layer l of module mod and returns its metadata.
func (w *blockWriter) linear(mod string, l, base Linear) (layerMeta, error) {
	switch l := l.(type) {
	case *Factored:
		if l.A.Bias != nil {
			return layerMeta{}, fmt.Errorf("%s: factor A has a bias", mod)
		}
		w.f32(mod+".A", []int{l.A.out, l.A.in}, l.A.Weight)
		w.f32(mod+".B", []int{l.B.out, l.B.in}, l.B.Weight)
		w.f32(mod+".B.bias", []int{l.B.out}, l.B.Bias)
		return layerMeta{Type: "factored"}, nil
	case *Dense:
		w.f32(mod+".weight", []int{l.out, l.in}, l.Weight)
		w.f32(mod+".bias", []int{l.out}, l.Bias)
		return layerMeta{Type: "dense"}, nil
	case *Quantized:
		w.ts = append(w.ts, quantizedTensors(mod, l)...)
		w.f32(mod+".bias", []int{l.out}, l.Bias)
		return layerMeta{Type: "quantized", Bits: l.Bits}, nil
	case *Grouped:
		w.f32(mod+".down", []int{l.Down.out, l.Down.in}, l.Down.Weight)
		for j, u := range l.Ups {
			w.f32(mod+".up."+strconv.Itoa(j), []int{u.out, u.in}, u.Weight)
		}
		w.f32(mod+".bias", []int{l.Out()}, l.Bias)
		return layerMeta{Type: "grouped", Groups: len(l.Ups), LatentBits: l.LatentBits, LatentGroup: l.LatentGroup}, nil
	case *Adapted:
		if l.Base != base {
			return layerMeta{}, fmt.Errorf("%s: the adapter wraps a layer the stage did not start from", mod)
		}
		w.f32(mod+".lora_A", []int{l.A.out, l.A.in}, l.A.Weight)
		w.f32(mod+".lora_B", []int{l.B.out, l.B.in}, l.B.Weight)
		return layerMeta{Type: "adapter"}, nil
	}
	return layerMeta{}, fmt.Errorf("%s: cannot store a %T layer", mod, l)
}

// mla adds the latent attention of comp's block and returns its metadata.
func (w *blockWriter) mla(comp *Block) (string, error) {
	a := comp.MLA
	q, ok := comp.Q.(*Dense)
	if !ok {
		return "", fmt.Errorf("an MLA q_proj is %T, not dense", comp.Q)
	}
	if a.KVB.Bias != nil {
		return "", fmt.Errorf("an MLA kv_b_proj has a bias")
	}
	w.f32("mla.q_proj", []int{q.out, q.in}, q.Weight)
	w.f32("mla.q_proj.bias", []int{q.out}, q.Bias)
	w.f32("mla.kv_a", []int{a.KVA.out, a.KVA.in}, a.KVA.Weight)
	w.f32("mla.kv_a.bias", []int{a.KVA.out}, a.KVA.Bias)
	w.f32("mla.kv_a_norm", []int{len(a.KVANorm)}, a.KVANorm)
	w.f32("mla.kv_b", []int{a.KVB.out, a.KVB.in}, a.KVB.Weight)
	meta, err := json.Marshal(mlaMeta{LoraRank: a.LoraRank, RopeDim: a.RopeDim, NopeDim: a.NopeDim, VDim: a.VDim, RopeFreq: a.RopeFreq})
	return string(meta), err
}

// WriteBlockDiff writes to path the linears of comp that are not those of
// base (and comp's latent attention, if base has none).
func WriteBlockDiff(path string, base, comp *Block) error {
	var w blockWriter
	md := map[string]string{}
	if comp.MLA != nil && base.MLA == nil {
		meta, err := w.mla(comp)
		if err != nil {
			return fmt.Errorf("store layers: %w", err)
		}
		md["mla"] = meta
	}
	metas := map[string]layerMeta{}
	lowRank := md["mla"] == ""
	for _, mod := range diffModules(base) {
		if md["mla"] != "" && (mod == "self_attn.q_proj" || mod == "self_attn.k_proj" || mod == "self_attn.v_proj") {
			continue // stored above
		}
		l := *comp.Linear(mod)
		if l == *base.Linear(mod) {
			continue
		}
		meta, err := w.linear(mod, l, *base.Linear(mod))
		if err != nil {
			return fmt.Errorf("store layers: %w", err)
		}
		metas[mod] = meta
		lowRank = lowRank && (meta.Type == "factored" || meta.Type == "dense")
	}
	if lowRank {
		md["rankzip"] = "block"
	} else {
		meta, err := json.Marshal(metas)
		if err != nil {
			return err
		}
		md["rankzip"], md["layers"] = "layers", string(meta)
	}
	return safetensors.WriteFile(path, w.ts, md)
}

// diffModules are the modules a block diff of b may hold: Modules, then, in
// a mixture-of-experts block, every expert's linears (its Modules entries
// for a dense MLP are nil there and never written).
func diffModules(b *Block) []string {
	if b.MoE == nil {
		return Modules
	}
	return appendExperts(slices.Clone(Modules), len(b.MoE.Experts), b.MoE.Shared != nil)
}

// withOwnExperts returns a copy of b whose experts can be replaced without
// changing b's.
func withOwnExperts(b *Block) Block {
	c := *b
	c.MoE = b.MoE.Clone()
	return c
}

// blockReader reads the tensors of a block-diff file and counts them, so
// that a tensor no layer claims is an error.
type blockReader struct {
	f    *safetensors.File
	used int
}

func (r *blockReader) errorf(format string, args ...any) error {
	return fmt.Errorf("store: %s: "+format, append([]any{r.f.Path()}, args...)...)
}

// f32 reads a float32 tensor, nil if it is optional and absent.
func (r *blockReader) f32(name string, optional bool) ([]float32, []int, error) {
	info, ok := r.f.Info(name)
	if !ok {
		if optional {
			return nil, nil, nil
		}
		return nil, nil, r.errorf("missing tensor %q", name)
	}
	r.used++
	v, err := r.f.Float32(name)
	return v, info.Shape, err
}

// shaped reads an optional float32 tensor of the given shape (-1: any size).
func (r *blockReader) shaped(name string, shape ...int) ([]float32, error) {
	info, ok := r.f.Info(name)
	if !ok {
		return nil, nil
	}
	bad := len(info.Shape) != len(shape)
	for i, d := range shape {
		bad = bad || d >= 0 && info.Shape[i] != d
	}
	if bad {
		return nil, r.errorf("tensor %q has shape %v, want %v", name, info.Shape, shape)
	}
	v, _, err := r.f32(name, true)
	return v, err
}

func (r *blockReader) i32(name string) ([]int32, error) {
	data, err := r.f.Bytes(name)
	if err != nil {
		return nil, r.errorf("tensor %q: %w", name, err)
	}
	r.used++
	return i32Values(data), nil
}

// ReadBlockDiff reads the block-diff file at path and returns a copy of base
// with the stored linears in place.
func ReadBlockDiff(path string, base *Block) (*Block, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &blockReader{f: f}
	md := f.Metadata()
	switch md["rankzip"] {
	case "block":
		return r.lowRank(base)
	case "layers":
		return r.layers(base, md)
	}
	return nil, fmt.Errorf("store: %s is not a block or layers artifact", path)
}

// lowRank reads the factored and dense layers of a "block" file, whose
// layer types the tensor names say.
func (r *blockReader) lowRank(orig *Block) (*Block, error) {
	b := withOwnExperts(orig)
	for _, mod := range diffModules(orig) {
		o := *orig.Linear(mod)
		if o == nil {
			continue // a MoE block's dense-MLP names, an MLA block's k/v
		}
		l, err := r.factoredOrDense(mod, o.Out(), o.In())
		if err != nil {
			return nil, err
		}
		if l != nil {
			*b.Linear(mod) = l
		}
	}
	if n := len(r.f.Names()); r.used != n {
		return nil, r.errorf("%d of its %d tensors are not linears of a block", n-r.used, n)
	}
	return &b, nil
}

// factoredOrDense reads module mod as a factored or a dense out×in layer;
// nil if the file holds neither.
func (r *blockReader) factoredOrDense(mod string, out, in int) (Linear, error) {
	if info, ok := r.f.Info(mod + ".A"); ok && len(info.Shape) == 2 {
		rank := info.Shape[0]
		a, err := r.shaped(mod+".A", rank, in)
		if err != nil {
			return nil, err
		}
		bw, err := r.shaped(mod+".B", out, rank)
		if err != nil {
			return nil, err
		}
		bias, err := r.shaped(mod+".B.bias", out)
		if err != nil {
			return nil, err
		}
		if bw == nil {
			return nil, r.errorf("%s.A without %s.B", mod, mod)
		}
		return &Factored{A: NewDense(rank, in, a, nil), B: NewDense(out, rank, bw, bias)}, nil
	}
	w, err := r.shaped(mod+".weight", out, in)
	if err != nil {
		return nil, err
	}
	bias, err := r.shaped(mod+".bias", out)
	if err != nil {
		return nil, err
	}
	switch {
	case w != nil:
		return NewDense(out, in, w, bias), nil
	case bias != nil:
		return nil, r.errorf("%s.bias without %s.weight", mod, mod)
	}
	return nil, nil
}

// layers reads a "layers" file, whose metadata types each layer.
func (r *blockReader) layers(base *Block, md map[string]string) (*Block, error) {
	var metas map[string]layerMeta
	if json.Unmarshal([]byte(md["layers"]), &metas) != nil {
		return nil, fmt.Errorf("store: %s is not a layers artifact", r.f.Path())
	}
	b := withOwnExperts(base)
	if raw, ok := md["mla"]; ok {
		if err := r.mla(&b, raw); err != nil {
			return nil, err
		}
	}
	for _, mod := range diffModules(base) {
		meta, ok := metas[mod]
		if !ok {
			continue
		}
		cur := *b.Linear(mod)
		out, in := cur.Out(), cur.In()
		l, err := r.linear(mod, meta, cur)
		if err != nil {
			return nil, err
		}
		if l.Out() != out || l.In() != in {
			return nil, r.errorf("%s is %d×%d, the block's %d×%d", mod, l.Out(), l.In(), out, in)
		}
		*b.Linear(mod) = l
	}
	if n := len(r.f.Names()); r.used != n {
		return nil, r.errorf("%d of its %d tensors are not layers of a block", n-r.used, n)
	}
	return &b, nil
}

// linear reads module mod, of the type meta names, over the current layer cur.
func (r *blockReader) linear(mod string, meta layerMeta, cur Linear) (Linear, error) {
	out, in := cur.Out(), cur.In()
	switch meta.Type {
	case "factored", "dense":
		l, err := r.factoredOrDense(mod, out, in)
		if err == nil && l == nil {
			err = r.errorf("%s: no %s tensors", mod, meta.Type)
		}
		return l, err
	case "quantized":
		q, err := r.f.Bytes(mod + ".q")
		if err != nil {
			return nil, r.errorf("tensor %q: %w", mod+".q", err)
		}
		r.used++
		scales, _, err := r.f32(mod+".scales", false)
		if err != nil {
			return nil, err
		}
		zeros, err := r.i32(mod + ".zeros")
		if err != nil {
			return nil, err
		}
		gidx, err := r.i32(mod + ".g_idx")
		if err != nil {
			return nil, err
		}
		bias, _, err := r.f32(mod+".bias", true)
		if err != nil {
			return nil, err
		}
		l, err := NewQuantized(out, in, meta.Bits, append([]uint8(nil), q...), scales, zeros, gidx, bias)
		if err != nil {
			return nil, r.errorf("%s: %w", mod, err)
		}
		return l, nil
	case "grouped":
		down, ds, err := r.f32(mod+".down", false)
		if err != nil {
			return nil, err
		}
		var ups []*Dense
		for j := range meta.Groups {
			u, us, err := r.f32(mod+".up."+strconv.Itoa(j), false)
			if err != nil {
				return nil, err
			}
			ups = append(ups, NewDense(us[0], us[1], u, nil))
		}
		bias, _, err := r.f32(mod+".bias", true)
		if err != nil {
			return nil, err
		}
		g, err := NewGrouped(NewDense(ds[0], ds[1], down, nil), ups, bias)
		if err != nil {
			return nil, r.errorf("%s: %w", mod, err)
		}
		g.LatentBits, g.LatentGroup = meta.LatentBits, meta.LatentGroup
		return g, nil
	case "adapter":
		a, as, err := r.f32(mod+".lora_A", false)
		if err != nil {
			return nil, err
		}
		bw, bs, err := r.f32(mod+".lora_B", false)
		if err != nil {
			return nil, err
		}
		if as[1] != in || bs[0] != out || as[0] != bs[1] {
			return nil, r.errorf("%s: adapter %v, %v on a %d×%d layer", mod, as, bs, out, in)
		}
		return &Adapted{Base: cur, A: NewDense(as[0], as[1], a, nil), B: NewDense(bs[0], bs[1], bw, nil)}, nil
	}
	return nil, r.errorf("%s: unknown layer type %q", mod, meta.Type)
}

// mla reads the latent attention a "layers" file holds into b.
func (r *blockReader) mla(b *Block, raw string) error {
	var mm mlaMeta
	if err := json.Unmarshal([]byte(raw), &mm); err != nil {
		return r.errorf("mla metadata: %w", err)
	}
	q, qs, err := r.f32("mla.q_proj", false)
	if err != nil {
		return err
	}
	qb, _, err := r.f32("mla.q_proj.bias", true)
	if err != nil {
		return err
	}
	kva, as, err := r.f32("mla.kv_a", false)
	if err != nil {
		return err
	}
	kvab, _, err := r.f32("mla.kv_a.bias", true)
	if err != nil {
		return err
	}
	norm, _, err := r.f32("mla.kv_a_norm", true)
	if err != nil {
		return err
	}
	kvb, bs, err := r.f32("mla.kv_b", false)
	if err != nil {
		return err
	}
	if as[0] != mm.LoraRank+mm.RopeDim || bs[1] != mm.LoraRank || len(mm.RopeFreq) != mm.RopeDim/2 {
		return r.errorf("MLA tensors kv_a %v, kv_b %v and %d rope frequencies disagree with %+v", as, bs, len(mm.RopeFreq), mm)
	}
	b.Q, b.K, b.V = NewDense(qs[0], qs[1], q, qb), nil, nil
	b.MLA = &MLA{KVA: NewDense(as[0], as[1], kva, kvab), KVANorm: norm, KVB: NewDense(bs[0], bs[1], kvb, nil),
		LoraRank: mm.LoraRank, RopeDim: mm.RopeDim, NopeDim: mm.NopeDim, VDim: mm.VDim, RopeFreq: mm.RopeFreq}
	return nil
}

// i32Values decodes little-endian int32s.
func i32Values(data []byte) []int32 {
	v := make([]int32, len(data)/4)
	for i := range v {
		v[i] = int32(binary.LittleEndian.Uint32(data[4*i:]))
	}
	return v
}
