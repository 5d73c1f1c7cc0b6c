package calib

import (
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
)

// A streams file is a safetensors file holding the calibration hidden states
// entering a block, batch by batch:
//
//	orig.<i>         F32 [rows, dim]  original model's states of batch i
//	orig.<i>.starts  I64 [seqs+1]     row where each sequence starts, then rows
//	comp.<i>, comp.<i>.starts         the compressed model's (sequential mode)
//
// with metadata {"rankzip": "streams", "mode": ..., "batches": N, "comp":
// "own" | "orig"}; "orig" means the compressed states equal the original ones
// (block 0, before anything is compressed) and are not stored twice.

// WriteStreams writes st to path as a streams file.
func WriteStreams(path string, st *Streams) error {
	var ts []safetensors.WriteTensor
	add := func(prefix string, hs []*model.States) {
		for i, h := range hs {
			name := prefix + "." + strconv.Itoa(i)
			ts = append(ts,
				safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: []int{h.Rows(), h.Dim}, Fill: safetensors.FillF32(h.X[:h.Rows()*h.Dim])},
				safetensors.WriteTensor{Name: name + ".starts", DType: safetensors.I64, Shape: []int{len(h.Starts)}, Data: encodeInts(h.Starts)})
		}
	}
	add("orig", st.Orig)
	comp := "own"
	if st.Mode == Sequential && aliased(st) {
		comp = "orig"
	} else {
		add("comp", st.Comp)
	}
	meta := map[string]string{"rankzip": "streams", "mode": string(st.Mode), "batches": strconv.Itoa(len(st.Orig)), "comp": comp}
	return safetensors.WriteFile(path, ts, meta)
}

// aliased reports whether every compressed batch is the original one.
func aliased(st *Streams) bool {
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

// ReadStreams reads the streams file at path.
func ReadStreams(path string) (*Streams, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	meta := f.Metadata()
	if meta["rankzip"] != "streams" {
		return nil, fmt.Errorf("store: %s is not a streams artifact", path)
	}
	n, err := strconv.Atoi(meta["batches"])
	if err != nil || n < 0 {
		return nil, fmt.Errorf("store: %s: bad batch count %q", path, meta["batches"])
	}
	st := &Streams{Mode: Mode(meta["mode"])}
	read := func(prefix string) ([]*model.States, error) {
		var hs []*model.States
		for i := range n {
			name := prefix + "." + strconv.Itoa(i)
			h, err := readStates(f, name)
			if err != nil {
				return nil, fmt.Errorf("store: %s: %w", path, err)
			}
			hs = append(hs, h)
		}
		return hs, nil
	}
	if st.Orig, err = read("orig"); err != nil {
		return nil, err
	}
	if st.Mode == Sequential {
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

func encodeInts(v []int) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(int64(x)))
	}
	return b
}
