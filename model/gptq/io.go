package gptq

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/rankzip/rankzip/model/safetensors"
)

// Tensor name suffixes of a quantized linear.
const (
	QWeightSuffix = ".qweight"
	QZerosSuffix  = ".qzeros"
	ScalesSuffix  = ".scales"
	GIdxSuffix    = ".g_idx"
)

// Tensors returns the four tensors of p under the module name prefix (for
// example "model.layers.0.mlp.down_proj"), ready for safetensors.WriteFile.
func (p *Packed) Tensors(prefix string) []safetensors.WriteTensor {
	le := binary.LittleEndian
	i32 := func(v []int32) []byte {
		b := make([]byte, 4*len(v))
		for i, x := range v {
			le.PutUint32(b[4*i:], uint32(x))
		}
		return b
	}
	scales := make([]byte, 2*len(p.Scales))
	for i, h := range p.Scales {
		le.PutUint16(scales[2*i:], h)
	}
	return []safetensors.WriteTensor{
		{Name: prefix + QWeightSuffix, DType: safetensors.I32, Shape: []int{p.In * p.Bits / 32, p.Out}, Data: i32(p.QWeight)},
		{Name: prefix + QZerosSuffix, DType: safetensors.I32, Shape: []int{p.Groups, p.Out * p.Bits / 32}, Data: i32(p.QZeros)},
		{Name: prefix + ScalesSuffix, DType: safetensors.F16, Shape: []int{p.Groups, p.Out}, Data: scales},
		{Name: prefix + GIdxSuffix, DType: safetensors.I32, Shape: []int{p.In}, Data: i32(p.GIdx)},
	}
}

// Source is where Read finds tensors: a *safetensors.File or a
// *safetensors.Checkpoint.
type Source interface {
	Info(name string) (safetensors.TensorInfo, bool)
	Bytes(name string) ([]byte, error)
}

// Read reads the quantized linear named prefix with the given bits from src,
// checking every dtype and shape against the others. A missing g_idx (older
// checkpoints without act-order) is taken as k / (in / groups).
func Read(src Source, prefix string, bits int) (*Packed, error) {
	if err := checkDims(bits, 32, 32); err != nil {
		return nil, fmt.Errorf("gptq: %s: %w", prefix, err)
	}
	get := func(suffix string, dt safetensors.DType, rank int) (safetensors.TensorInfo, []byte, error) {
		name := prefix + suffix
		info, ok := src.Info(name)
		if !ok {
			return info, nil, fmt.Errorf("gptq: tensor %s missing", name)
		}
		if info.DType != dt || len(info.Shape) != rank {
			return info, nil, fmt.Errorf("gptq: tensor %s is %s %v, want %s of rank %d", name, info.DType, info.Shape, dt, rank)
		}
		b, err := src.Bytes(name)
		if err != nil {
			return info, nil, fmt.Errorf("gptq: tensor %s: %w", name, err)
		}
		return info, b, nil
	}
	qwInfo, qw, err := get(QWeightSuffix, safetensors.I32, 2)
	if err != nil {
		return nil, err
	}
	scInfo, sc, err := get(ScalesSuffix, safetensors.F16, 2)
	if err != nil {
		return nil, err
	}
	qzInfo, qz, err := get(QZerosSuffix, safetensors.I32, 2)
	if err != nil {
		return nil, err
	}
	rows, out := qwInfo.Shape[0], qwInfo.Shape[1]
	in := rows * 32 / bits
	if rows*32%bits != 0 {
		return nil, fmt.Errorf("gptq: %s%s: %d rows is not a whole number of %d-bit columns", prefix, QWeightSuffix, rows, bits)
	}
	groups := scInfo.Shape[0]
	if scInfo.Shape[1] != out || !slices.Equal(qzInfo.Shape, []int{groups, out * bits / 32}) {
		return nil, fmt.Errorf("gptq: %s: shapes qweight %v, scales %v, qzeros %v disagree for %d bits",
			prefix, qwInfo.Shape, scInfo.Shape, qzInfo.Shape, bits)
	}
	p := &Packed{Bits: bits, Out: out, In: in, Groups: groups}
	if err := checkDims(bits, out, in); err != nil {
		return nil, fmt.Errorf("gptq: %s: %w", prefix, err)
	}
	p.QWeight, p.QZeros = decodeI32(qw), decodeI32(qz)
	p.Scales = make([]uint16, len(sc)/2)
	for i := range p.Scales {
		p.Scales[i] = binary.LittleEndian.Uint16(sc[2*i:])
	}
	if _, ok := src.Info(prefix + GIdxSuffix); ok {
		gInfo, gb, err := get(GIdxSuffix, safetensors.I32, 1)
		if err != nil {
			return nil, err
		}
		if gInfo.Shape[0] != in {
			return nil, fmt.Errorf("gptq: %s%s has %d entries for %d input features", prefix, GIdxSuffix, gInfo.Shape[0], in)
		}
		p.GIdx = decodeI32(gb)
	} else {
		if groups < 1 || in%groups != 0 {
			return nil, fmt.Errorf("gptq: %s: no g_idx, and %d groups do not divide %d input features", prefix, groups, in)
		}
		p.GIdx = make([]int32, in)
		for k := range p.GIdx {
			p.GIdx[k] = int32(k / (in / groups))
		}
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("gptq: %s: %w", prefix, err)
	}
	return p, nil
}

func decodeI32(b []byte) []int32 {
	v := make([]int32, len(b)/4)
	for i := range v {
		v[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}
