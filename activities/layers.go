package activities

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/store"
)

// Layers artifacts hold the linears one stage (palu, rtn, gptq, eora)
// changed in one block, relative to the block it started from (the
// low-rank stages keep store.PutBlock's format). A safetensors file with
// metadata {"rankzip": "layers", "layers": {module: layerMeta}} and, by
// module:
//
//	quantized  <m>.q U8 [out, in], <m>.scales F32 [groups, out], <m>.zeros I32, <m>.g_idx I32 [in], <m>.bias F32
//	grouped    <m>.down F32 [latent, in], <m>.up.<j> F32 [out/G, r_j], <m>.bias F32
//	adapter    <m>.lora_A F32 [r, in], <m>.lora_B F32 [out, r]   (wraps the layer the stage started from)
//
// An mla stage replaces q_proj, k_proj and v_proj by latent attention:
// metadata "mla" holds mlaMeta, and the tensors are mla.q_proj (+ .bias),
// mla.kv_a (+ .bias), mla.kv_a_norm (optional) and mla.kv_b.

type layerMeta struct {
	Type        string `json:"type"` // quantized | grouped | adapter
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

// putLayers stores the linears of comp that are not those of base.
func putLayers(s *store.Store, key string, base, comp *model.Block) (store.Ref, error) {
	var ts []safetensors.WriteTensor
	f32 := func(name string, shape []int, v []float32) {
		if v != nil {
			ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape, Data: encodeF32(v)})
		}
	}
	i32 := func(name string, shape []int, v []int32) {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
		}
		ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.I32, Shape: shape, Data: b})
	}
	metas := map[string]layerMeta{}
	md := map[string]string{"rankzip": "layers"}
	if a := comp.MLA; a != nil && base.MLA == nil {
		q, ok := comp.Q.(*model.Dense)
		if !ok {
			return store.Ref{}, fmt.Errorf("store layers: an MLA q_proj is %T, not dense", comp.Q)
		}
		f32("mla.q_proj", []int{q.Out(), q.In()}, q.Weight)
		f32("mla.q_proj.bias", []int{q.Out()}, q.Bias)
		f32("mla.kv_a", []int{a.KVA.Out(), a.KVA.In()}, a.KVA.Weight)
		f32("mla.kv_a.bias", []int{a.KVA.Out()}, a.KVA.Bias)
		f32("mla.kv_a_norm", []int{len(a.KVANorm)}, a.KVANorm)
		f32("mla.kv_b", []int{a.KVB.Out(), a.KVB.In()}, a.KVB.Weight)
		if a.KVB.Bias != nil {
			return store.Ref{}, fmt.Errorf("store layers: an MLA kv_b_proj has a bias")
		}
		meta, err := json.Marshal(mlaMeta{LoraRank: a.LoraRank, RopeDim: a.RopeDim, NopeDim: a.NopeDim, VDim: a.VDim, RopeFreq: a.RopeFreq})
		if err != nil {
			return store.Ref{}, err
		}
		md["mla"] = string(meta)
	}
	for _, mod := range model.Modules {
		if md["mla"] != "" && (mod == "self_attn.q_proj" || mod == "self_attn.k_proj" || mod == "self_attn.v_proj") {
			continue // stored above
		}
		l := *comp.Linear(mod)
		if l == *base.Linear(mod) {
			continue
		}
		switch l := l.(type) {
		case *model.Quantized:
			metas[mod] = layerMeta{Type: "quantized", Bits: l.Bits}
			ts = append(ts, safetensors.WriteTensor{Name: mod + ".q", DType: safetensors.U8, Shape: []int{l.Out(), l.In()}, Data: l.Q})
			f32(mod+".scales", []int{l.Groups(), l.Out()}, l.Scales)
			i32(mod+".zeros", []int{l.Groups(), l.Out()}, l.Zeros)
			i32(mod+".g_idx", []int{l.In()}, l.GIdx)
			f32(mod+".bias", []int{l.Out()}, l.Bias)
		case *model.Grouped:
			metas[mod] = layerMeta{Type: "grouped", Groups: len(l.Ups), LatentBits: l.LatentBits, LatentGroup: l.LatentGroup}
			f32(mod+".down", []int{l.Down.Out(), l.Down.In()}, l.Down.Weight)
			for j, u := range l.Ups {
				f32(mod+".up."+strconv.Itoa(j), []int{u.Out(), u.In()}, u.Weight)
			}
			f32(mod+".bias", []int{l.Out()}, l.Bias)
		case *gptq.Adapted:
			if l.Base != *base.Linear(mod) {
				return store.Ref{}, fmt.Errorf("store layers: %s: the adapter wraps a layer the stage did not start from", mod)
			}
			metas[mod] = layerMeta{Type: "adapter"}
			f32(mod+".lora_A", []int{l.A.Out(), l.A.In()}, l.A.Weight)
			f32(mod+".lora_B", []int{l.B.Out(), l.B.In()}, l.B.Weight)
		default:
			return store.Ref{}, fmt.Errorf("store layers: %s: cannot store a %T layer", mod, l)
		}
	}
	meta, err := json.Marshal(metas)
	if err != nil {
		return store.Ref{}, err
	}
	md["layers"] = string(meta)
	return s.Create(key, func(tmp string) error {
		return safetensors.WriteFile(tmp, ts, md)
	})
}

// getLayers reads a layers artifact and returns a copy of base with the
// stored linears in place.
func getLayers(s *store.Store, r store.Ref, base *model.Block) (*model.Block, error) {
	p, err := s.Verify(r)
	if err != nil {
		return nil, err
	}
	f, err := safetensors.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	md := f.Metadata()
	var metas map[string]layerMeta
	if md["rankzip"] != "layers" || json.Unmarshal([]byte(md["layers"]), &metas) != nil {
		return nil, fmt.Errorf("store: %s is not a layers artifact", p)
	}
	b := *base
	used := 0
	f32 := func(name string, optional bool) ([]float32, []int, error) {
		info, ok := f.Info(name)
		if !ok {
			if optional {
				return nil, nil, nil
			}
			return nil, nil, fmt.Errorf("store: %s: missing tensor %q", p, name)
		}
		used++
		v, err := f.Float32(name)
		return v, info.Shape, err
	}
	i32 := func(name string) ([]int32, error) {
		data, err := f.Bytes(name)
		if err != nil {
			return nil, fmt.Errorf("store: %s: tensor %q: %w", p, name, err)
		}
		used++
		v := make([]int32, len(data)/4)
		for i := range v {
			v[i] = int32(binary.LittleEndian.Uint32(data[4*i:]))
		}
		return v, nil
	}
	if raw, ok := md["mla"]; ok {
		var mm mlaMeta
		if err := json.Unmarshal([]byte(raw), &mm); err != nil {
			return nil, fmt.Errorf("store: %s: mla metadata: %w", p, err)
		}
		q, qs, err := f32("mla.q_proj", false)
		if err != nil {
			return nil, err
		}
		qb, _, err := f32("mla.q_proj.bias", true)
		if err != nil {
			return nil, err
		}
		kva, as, err := f32("mla.kv_a", false)
		if err != nil {
			return nil, err
		}
		kvab, _, err := f32("mla.kv_a.bias", true)
		if err != nil {
			return nil, err
		}
		norm, _, err := f32("mla.kv_a_norm", true)
		if err != nil {
			return nil, err
		}
		kvb, bs, err := f32("mla.kv_b", false)
		if err != nil {
			return nil, err
		}
		if as[0] != mm.LoraRank+mm.RopeDim || bs[1] != mm.LoraRank || len(mm.RopeFreq) != mm.RopeDim/2 {
			return nil, fmt.Errorf("store: %s: MLA tensors kv_a %v, kv_b %v and %d rope frequencies disagree with %+v", p, as, bs, len(mm.RopeFreq), mm)
		}
		b.Q, b.K, b.V = model.NewDense(qs[0], qs[1], q, qb), nil, nil
		b.MLA = &model.MLA{KVA: model.NewDense(as[0], as[1], kva, kvab), KVANorm: norm, KVB: model.NewDense(bs[0], bs[1], kvb, nil),
			LoraRank: mm.LoraRank, RopeDim: mm.RopeDim, NopeDim: mm.NopeDim, VDim: mm.VDim, RopeFreq: mm.RopeFreq}
	}
	for _, mod := range model.Modules {
		meta, ok := metas[mod]
		if !ok {
			continue
		}
		cur := *b.Linear(mod)
		out, in := cur.Out(), cur.In()
		var l model.Linear
		switch meta.Type {
		case "quantized":
			q, err := f.Bytes(mod + ".q")
			if err != nil {
				return nil, fmt.Errorf("store: %s: tensor %q: %w", p, mod+".q", err)
			}
			used++
			scales, _, err := f32(mod+".scales", false)
			if err != nil {
				return nil, err
			}
			zeros, err := i32(mod + ".zeros")
			if err != nil {
				return nil, err
			}
			gidx, err := i32(mod + ".g_idx")
			if err != nil {
				return nil, err
			}
			bias, _, err := f32(mod+".bias", true)
			if err != nil {
				return nil, err
			}
			if l, err = model.NewQuantized(out, in, meta.Bits, append([]uint8(nil), q...), scales, zeros, gidx, bias); err != nil {
				return nil, fmt.Errorf("store: %s: %s: %w", p, mod, err)
			}
		case "grouped":
			down, ds, err := f32(mod+".down", false)
			if err != nil {
				return nil, err
			}
			var ups []*model.Dense
			for j := range meta.Groups {
				u, us, err := f32(mod+".up."+strconv.Itoa(j), false)
				if err != nil {
					return nil, err
				}
				ups = append(ups, model.NewDense(us[0], us[1], u, nil))
			}
			bias, _, err := f32(mod+".bias", true)
			if err != nil {
				return nil, err
			}
			g, err := model.NewGrouped(model.NewDense(ds[0], ds[1], down, nil), ups, bias)
			if err != nil {
				return nil, fmt.Errorf("store: %s: %s: %w", p, mod, err)
			}
			g.LatentBits, g.LatentGroup = meta.LatentBits, meta.LatentGroup
			l = g
		case "adapter":
			a, as, err := f32(mod+".lora_A", false)
			if err != nil {
				return nil, err
			}
			bw, bs, err := f32(mod+".lora_B", false)
			if err != nil {
				return nil, err
			}
			if as[1] != in || bs[0] != out || as[0] != bs[1] {
				return nil, fmt.Errorf("store: %s: %s: adapter %v, %v on a %d×%d layer", p, mod, as, bs, out, in)
			}
			l = &gptq.Adapted{Base: cur, A: model.NewDense(as[0], as[1], a, nil), B: model.NewDense(bs[0], bs[1], bw, nil)}
		default:
			return nil, fmt.Errorf("store: %s: %s: unknown layer type %q", p, mod, meta.Type)
		}
		if l.Out() != out || l.In() != in {
			return nil, fmt.Errorf("store: %s: %s is %d×%d, the block's %d×%d", p, mod, l.Out(), l.In(), out, in)
		}
		*b.Linear(mod) = l
	}
	if n := len(f.Names()); used != n {
		return nil, fmt.Errorf("store: %s: %d of its %d tensors are not layers of a block", p, n-used, n)
	}
	return &b, nil
}

func encodeF32(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}
