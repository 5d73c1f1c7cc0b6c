package gptq_test

import (
	"fmt"

	"github.com/rankzip/rankzip/model/gptq"
)

// A 4-bit, 32 × 32 layer with one group: the first output channel's codes
// count 0…15 up and back down, packed eight to a word along the input, low
// nibble first; the symmetric zero point 8 is stored as 7 in every nibble.
func ExamplePack() {
	l := &gptq.Layer{Bits: 4, Out: 32, In: 32,
		Q: make([]uint8, 32*32), Scales: make([]float32, 32), Zeros: make([]int32, 32), GIdx: make([]int32, 32)}
	for k := range 16 {
		l.Q[k], l.Q[16+k] = uint8(k), uint8(15-k)
	}
	for n := range 32 {
		l.Scales[n], l.Zeros[n] = 0.25, 8
	}
	p, err := gptq.Pack(l)
	if err != nil {
		panic(err)
	}
	for r := range 4 {
		fmt.Printf("qweight[%d][0] = %#08x\n", r, uint32(p.QWeight[r*32]))
	}
	fmt.Printf("qzeros[0][0] = %#08x, scales[0][0] = %#04x\n", uint32(p.QZeros[0]), p.Scales[0])
	back, err := gptq.Unpack(p)
	if err != nil {
		panic(err)
	}
	fmt.Println("dequantized row 0:", back.Dequantize()[:8])
	// Output:
	// qweight[0][0] = 0x76543210
	// qweight[1][0] = 0xfedcba98
	// qweight[2][0] = 0x89abcdef
	// qweight[3][0] = 0x01234567
	// qzeros[0][0] = 0x77777777, scales[0][0] = 0x3400
	// dequantized row 0: [-2 -1.75 -1.5 -1.25 -1 -0.75 -0.5 -0.25]
}
