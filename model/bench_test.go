package model

import (
	"fmt"
	"testing"

	"github.com/rankzip/rankzip/kernels"
)

// benchShape is a synthetic Llama with realistic layer sizes (TinyLlama-1.1B's
// blocks): hidden 2048, intermediate 5632, 32 heads, 4 KV heads.
var benchShape = SyntheticConfig{Hidden: 2048, Intermediate: 5632, Layers: 2, Heads: 32, KVHeads: 4,
	Vocab: 32000, MaxPositions: 2048}

const benchTokens = 512

// forwardFLOPs counts the multiply-adds (×2) of a forward pass over one
// sequence of n tokens: the linear layers, the attention products over the
// full n×n score matrix as computed, and the LM head.
func forwardFLOPs(c *Config, n int) float64 {
	h, i, q, kv := float64(c.HiddenSize), float64(c.IntermediateSize), float64(c.NumHeads*c.HeadDim), float64(c.NumKVHeads*c.HeadDim)
	linear := h*q + 2*h*kv + q*h + 3*h*i
	attn := 2 * float64(c.NumHeads) * float64(n) * float64(c.HeadDim) // q kᵀ and p v per query row
	perToken := float64(c.NumLayers)*(linear+attn) + float64(c.VocabSize)*h
	return 2 * perToken * float64(n)
}

// BenchmarkForward reports forward-pass throughput with every available
// backend next to the backend's own sgemm rate measured in the same run.
func BenchmarkForward(b *testing.B) {
	for _, k := range kernels.Available() {
		b.Run(k.Name(), func(b *testing.B) {
			m, err := Synthetic(benchShape, 1, k)
			if err != nil {
				b.Fatal(err)
			}
			seq := make([]int32, benchTokens)
			for i := range seq {
				seq[i] = int32((i * 7919) % benchShape.Vocab)
			}
			flops := forwardFLOPs(m.Config, benchTokens)
			sgemm := kernels.MeasureSgemm(k, 2048)
			b.ResetTimer()
			for b.Loop() {
				if _, err := m.Forward([][]int32{seq}); err != nil {
					b.Fatal(err)
				}
			}
			sec := b.Elapsed().Seconds() / float64(b.N)
			b.ReportMetric(benchTokens/sec, "tokens/s")
			b.ReportMetric(flops/sec/1e9, "GFLOP/s")
			b.ReportMetric(sgemm, "sgemm-GFLOP/s")
			b.Log(fmt.Sprintf("%s: %.0f tokens/s, %.1f GFLOP/s = %.0f%% of sgemm 2048³ (%.1f GFLOP/s)",
				k.Name(), benchTokens/sec, flops/sec/1e9, 100*flops/sec/1e9/sgemm, sgemm))
		})
	}
}
