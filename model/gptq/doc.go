// Package gptq packs quantized linear layers into the Hugging Face GPTQ
// checkpoint layout ("gptq", v1), the one AutoGPTQ writes and transformers,
// vLLM and GPTQModel load, and reads it back.
//
// # Tensors
//
// A quantized linear P with K = in features, N = out features, b bits and G
// groups is stored as
//
//	P.qweight  I32  [K·b/32, N]   codes, packed along the input dimension
//	P.qzeros   I32  [G, N·b/32]   zero points minus one, packed along the output dimension
//	P.scales   F16  [G, N]        scale of every (group, output channel)
//	P.g_idx    I32  [K]           group of every input column
//
// and dequantizes as
//
//	W[n][k] = scales[g][n] · (q[k][n] − (qz[g][n] + 1)),   g = g_idx[k]
//
// where q and qz are the unpacked codes and stored zeros. The stored zero is
// z − 1 (the v1 convention, checkpoint_format "gptq"): a true zero point
// must lie in [1, 2^b], and loaders add the 1 back without wrapping, so a
// zero point of 0 cannot be stored (package methods/quant never produces
// one). K and N must be multiples of 32: AutoGPTQ allocates
// [K/32·b, N] and [G, N/32·b] words, and 3-bit packing works in blocks of 32
// values.
//
// # Packing
//
// The values along the packed dimension are cut into blocks of 32, each
// stored in b consecutive int32 words as one little-endian bit stream:
// value j of a block occupies bits b·j … b·j + b − 1 of the stream, bit i of
// the stream being bit i mod 32 of word i / 32 (low bits first). For b = 2,
// 4 and 8 no value straddles two words (16, 8 and 4 values a word). For
// b = 3 the 32 values fill 3 words as AutoGPTQ's packer writes them:
//
//	word 0: values 0–9 at bits 3j, bits 0–1 of value 10 at bits 30–31
//	word 1: bit 2 of value 10 at bit 0, values 11–20 at bits 3(j−11)+1,
//	        bit 0 of value 21 at bit 31
//	word 2: bits 1–2 of value 21 at bits 0–1, values 22–31 at bits 3(j−22)+2
//
// Words are computed as uint32 and stored as their int32 bit pattern.
//
// # Scales
//
// Scales are stored as float16, rounded to nearest. Package methods/quant
// produces float16 scales, so they are stored exactly, and Dequantize (in
// float32: a float16 times an integer below 2⁹ is exact in float32)
// reproduces its dequantized weight bit for bit.
//
// # Config
//
// QuantizeConfigJSON gives the quantization_config object that goes into
// config.json and, as is, into quantize_config.json.
package gptq
