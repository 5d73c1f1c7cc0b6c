package store

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// Streams artifacts are safetensors files holding the calibration hidden
// states entering a block, batch by batch:
//
//	orig.<i>         F32 [rows, dim]  original model's states of batch i
//	orig.<i>.starts  I64 [seqs+1]     row where each sequence starts, then rows
//	comp.<i>, comp.<i>.starts         the compressed model's (sequential mode)
//
// with metadata {"rankzip": "streams", "mode": ..., "batches": N, "comp":
// "own" | "orig"}; "orig" means the compressed states equal the original ones
// (block 0, before anything is compressed) and are not stored twice.

// PutStreams stores calibration streams under key.
func (s *Store) PutStreams(key string, st *calib.Streams) (Ref, error) {
	var ts []safetensors.WriteTensor
	add := func(prefix string, hs []*model.States) {
		for i, h := range hs {
			name := prefix + "." + strconv.Itoa(i)
			ts = append(ts,
				safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: []int{h.Rows(), h.Dim}, Fill: fillF32(h.X[:h.Rows()*h.Dim])},
				safetensors.WriteTensor{Name: name + ".starts", DType: safetensors.I64, Shape: []int{len(h.Starts)}, Data: encodeInts(h.Starts)})
		}
	}
	add("orig", st.Orig)
	comp := "own"
	if st.Mode == calib.Sequential && aliased(st) {
		comp = "orig"
	} else {
		add("comp", st.Comp)
	}
	meta := map[string]string{"rankzip": "streams", "mode": string(st.Mode), "batches": strconv.Itoa(len(st.Orig)), "comp": comp}
	return s.Create(key, func(tmp string) error { return safetensors.WriteFile(tmp, ts, meta) })
}

// aliased reports whether every compressed batch is the original one.
func aliased(st *calib.Streams) bool {
	if len(st.Comp) != len(st.Orig) {
		return false
	}
	for i, c := range st.Comp {
		if c != st.Orig[i] {
			return false
		}
	}
	return true
}

// GetStreams reads and verifies a streams artifact.
func (s *Store) GetStreams(r Ref) (*calib.Streams, error) {
	p, err := s.Verify(r)
	if err != nil {
		return nil, err
	}
	f, err := safetensors.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	meta := f.Metadata()
	if meta["rankzip"] != "streams" {
		return nil, fmt.Errorf("store: %s is not a streams artifact", p)
	}
	n, err := strconv.Atoi(meta["batches"])
	if err != nil || n < 0 {
		return nil, fmt.Errorf("store: %s: bad batch count %q", p, meta["batches"])
	}
	st := &calib.Streams{Mode: calib.Mode(meta["mode"])}
	read := func(prefix string) ([]*model.States, error) {
		var hs []*model.States
		for i := range n {
			name := prefix + "." + strconv.Itoa(i)
			h, err := readStates(f, name)
			if err != nil {
				return nil, fmt.Errorf("store: %s: %w", p, err)
			}
			hs = append(hs, h)
		}
		return hs, nil
	}
	if st.Orig, err = read("orig"); err != nil {
		return nil, err
	}
	if st.Mode == calib.Sequential {
		if meta["comp"] == "orig" {
			st.Comp = append([]*model.States(nil), st.Orig...)
		} else if st.Comp, err = read("comp"); err != nil {
			return nil, err
		}
	}
	return st, nil
}

func readStates(f *safetensors.File, name string) (*model.States, error) {
	info, ok := f.Info(name)
	if !ok || len(info.Shape) != 2 {
		return nil, fmt.Errorf("tensor %q missing or not 2-D", name)
	}
	x, err := f.Float32(name)
	if err != nil {
		return nil, err
	}
	sinfo, ok := f.Info(name + ".starts")
	if !ok || sinfo.DType != safetensors.I64 {
		return nil, fmt.Errorf("tensor %q missing or not I64", name+".starts")
	}
	b, err := f.Bytes(name + ".starts")
	if err != nil {
		return nil, err
	}
	starts := make([]int, len(b)/8)
	for i := range starts {
		starts[i] = int(int64(binary.LittleEndian.Uint64(b[8*i:])))
	}
	if len(starts) < 1 || starts[0] != 0 || starts[len(starts)-1] != info.Shape[0] {
		return nil, fmt.Errorf("tensor %q: starts %v do not fit %d rows", name, starts, info.Shape[0])
	}
	return &model.States{X: x, Dim: info.Shape[1], Starts: starts}, nil
}

// Block artifacts are safetensors files holding the linears of a compressed
// block that differ from the original block, by module name:
//
//	<module>.A [rank, in], <module>.B [out, rank], <module>.B.bias [out]   a factored layer
//	<module>.weight [out, in], <module>.bias [out]                          a replaced dense layer
//
// all F32, with metadata {"rankzip": "block"}.

// PutBlock stores the linears of comp that are not those of orig.
func (s *Store) PutBlock(key string, orig, comp *model.Block) (Ref, error) {
	var ts []safetensors.WriteTensor
	add := func(name string, shape []int, v []float32) {
		if v != nil {
			ts = append(ts, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: shape, Fill: fillF32(v)})
		}
	}
	for _, mod := range model.Modules {
		l := *comp.Linear(mod)
		if l == *orig.Linear(mod) {
			continue
		}
		switch l := l.(type) {
		case *model.Factored:
			if l.A.Bias != nil {
				return Ref{}, fmt.Errorf("store: %s: factor A has a bias", mod)
			}
			add(mod+".A", []int{l.A.Out(), l.A.In()}, l.A.Weight)
			add(mod+".B", []int{l.B.Out(), l.B.In()}, l.B.Weight)
			add(mod+".B.bias", []int{l.B.Out()}, l.B.Bias)
		case *model.Dense:
			add(mod+".weight", []int{l.Out(), l.In()}, l.Weight)
			add(mod+".bias", []int{l.Out()}, l.Bias)
		default:
			return Ref{}, fmt.Errorf("store: %s: cannot store a %T layer", mod, l)
		}
	}
	return s.Create(key, func(tmp string) error {
		return safetensors.WriteFile(tmp, ts, map[string]string{"rankzip": "block"})
	})
}

// GetBlock reads and verifies a block artifact and returns a copy of orig
// with the stored linears in place.
func (s *Store) GetBlock(r Ref, orig *model.Block) (*model.Block, error) {
	p, err := s.Verify(r)
	if err != nil {
		return nil, err
	}
	f, err := safetensors.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Metadata()["rankzip"] != "block" {
		return nil, fmt.Errorf("store: %s is not a block artifact", p)
	}
	b := *orig
	used := 0
	tensor := func(name string, shape ...int) ([]float32, error) {
		info, ok := f.Info(name)
		if !ok {
			return nil, nil
		}
		if len(info.Shape) != len(shape) {
			return nil, fmt.Errorf("store: %s: tensor %q has shape %v, want %v", p, name, info.Shape, shape)
		}
		for i, d := range shape {
			if d >= 0 && info.Shape[i] != d {
				return nil, fmt.Errorf("store: %s: tensor %q has shape %v, want %v", p, name, info.Shape, shape)
			}
		}
		used++
		return f.Float32(name)
	}
	for _, mod := range orig.Modules() { // a MoE block has no mlp linears, an MLA block no k/v
		o := *orig.Linear(mod)
		out, in := o.Out(), o.In()
		if info, ok := f.Info(mod + ".A"); ok && len(info.Shape) == 2 {
			r := info.Shape[0]
			a, err := tensor(mod+".A", r, in)
			if err != nil {
				return nil, err
			}
			bw, err := tensor(mod+".B", out, r)
			if err != nil {
				return nil, err
			}
			bias, err := tensor(mod+".B.bias", out)
			if err != nil {
				return nil, err
			}
			if bw == nil {
				return nil, fmt.Errorf("store: %s: %s.A without %s.B", p, mod, mod)
			}
			*b.Linear(mod) = &model.Factored{A: model.NewDense(r, in, a, nil), B: model.NewDense(out, r, bw, bias)}
			continue
		}
		w, err := tensor(mod+".weight", out, in)
		if err != nil {
			return nil, err
		}
		bias, err := tensor(mod+".bias", out)
		if err != nil {
			return nil, err
		}
		if w != nil {
			*b.Linear(mod) = model.NewDense(out, in, w, bias)
		} else if bias != nil {
			return nil, fmt.Errorf("store: %s: %s.bias without %s.weight", p, mod, mod)
		}
	}
	if n := len(f.Names()); used != n {
		return nil, fmt.Errorf("store: %s: %d of its %d tensors are not linears of a block", p, n-used, n)
	}
	return &b, nil
}

// fillF32 streams v as little-endian float32.
func fillF32(v []float32) func(io.Writer) error {
	return func(w io.Writer) error {
		buf := make([]byte, 0, 1<<16)
		for len(v) > 0 {
			n := min(len(v), cap(buf)/4)
			buf = buf[:4*n]
			for i, x := range v[:n] {
				binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(x))
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
			v = v[n:]
		}
		return nil
	}
}

func encodeInts(v []int) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(int64(x)))
	}
	return b
}
