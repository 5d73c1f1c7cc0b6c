// Package model reads, runs and writes causal language models in the Hugging
// Face layout: Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3 (text),
// Mixtral, Qwen3-MoE and Qwen2-MoE, plus the layouts rankzip's stages produce (its native
// factored and quantized layers, Palu's latents, DeepSeek-V3 MLA).
//
// Contract:
//
//   - Config parsing (ParseConfig, ReadConfig) honours every field that
//     changes the numerics or refuses the config with the field named
//     ("config.json: field ...: not supported"); nothing is ignored
//     silently. RoPE settings are read in both the transformers 4.x form
//     (rope_theta, rope_scaling) and the 5.x form (rope_parameters), see
//     rope.go.
//   - Load checks every tensor's name, dtype and shape against the config
//     and converts all weights to float32 in memory; a missing, extra or
//     misshapen tensor is an error naming it and the file. F32, BF16 and F16
//     files, single or sharded, are read.
//   - A Model holds float32 weights, runs its large products on its Backend
//     (kernels); Forward, RunBlock and the decoders read it and never change
//     it. Forward returns the logits of a batch row-major, rows×vocab, the
//     sequences' positions in order.
//   - Linear is the one interface of a projection: dense, factored (A, B),
//     Palu-grouped, quantized, or with an adapter. Stages replace a block's
//     linears; everything else of the model is shared.
//   - Save and its variants write each file atomically (temporary name,
//     fsync, rename) with the modes of user files, config.json last, and
//     read the written config back to the same settings before returning.
//   - The differences of an architecture live in its own file (arch.go lists
//     them), not in conditionals spread over the forward pass.
package model
