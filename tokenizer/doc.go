// Package tokenizer reads Hugging Face tokenizer.json files and encodes and
// decodes text exactly as the Rust `tokenizers` library does (verified
// against its official Node binding, version 0.23.2, see testdata/README.md).
//
// Supported components (anything else in a file is refused at load time with
// an error naming the component, never tokenized differently):
//   - models: BPE (byte-level and SentencePiece-style with byte_fallback,
//     unk fusing, ignore_merges, continuing_subword_prefix, end_of_word_suffix);
//     Unigram (Viterbi, unknown pieces fused, byte_fallback), its scores read
//     as the library's JSON parser reads them (see serdeFloat)
//   - normalizers: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend,
//     Replace
//   - pre-tokenizers: Sequence, Split (the regular expressions of GPT-2,
//     Llama 3, Qwen2/3 and every pattern that uses no lookaround except the
//     `\s+(?!\S)|\s+` idiom), ByteLevel, Metaspace, Digits
//   - post-processors: TemplateProcessing, ByteLevel, Sequence,
//     RobertaProcessing, BertProcessing
//   - decoders: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip,
//     Sequence
//   - added tokens with lstrip, rstrip, single_word and normalized, special
//     or not
//
// Load also reads tokenizer_config.json where present, for the BOS and EOS
// tokens and, for the tokenizer classes whose transformers implementation
// rebuilds the post-processor from them (Llama, CodeLlama, Gemma),
// add_bos_token and add_eos_token.
package tokenizer
