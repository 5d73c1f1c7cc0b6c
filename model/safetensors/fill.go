package safetensors

import (
	"encoding/binary"
	"io"
	"math"
)

// FillF32 streams v as little-endian float32, a WriteTensor's Fill: a large
// tensor is written without a second copy of it in memory.
func FillF32(v []float32) func(io.Writer) error {
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
