// Package safetensors reads and writes the safetensors checkpoint format, and
// converts between float32 and the 16-bit float formats checkpoints use.
//
// # Format
//
// A safetensors file is an 8-byte little-endian length N, then N bytes of a
// JSON object, then the data section:
//
//	{"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]},
//	 ...,
//	 "__metadata__": {"format": "pt"}}
//
// data_offsets are [begin, end) byte offsets relative to the start of the data
// section (file offset 8+N). Tensors are stored row-major, little-endian.
//
// # Reading
//
// [Open] reads the header through an io.ReaderAt and validates it before
// anything else happens: the header length against the file size and a 100 MiB
// cap, the JSON (an object with no duplicate keys), every entry (known dtype,
// non-negative shape, offsets inside the data section, end−begin equal to
// elements × dtype size, no unknown fields), no two tensors overlapping, and
// __metadata__ being string → string. Only then is the file mapped read-only,
// so [File.Bytes] is a zero-copy view. Gaps between tensors and bytes after the
// last one are allowed (other writers pad), overlaps are not. A corrupt file is
// reported as a [*FormatError] naming the file and, where there is one, the
// tensor.
//
// Slices returned by Bytes point into the mapping: they are valid until Close
// and must not be written to. The file must not be truncated while it is open
// (a read past the new end of a mapping kills the process with SIGBUS).
//
// [OpenDir] opens a Hugging Face checkpoint directory: the shards listed in
// model.safetensors.index.json, checked against that index, or the single
// model.safetensors.
//
// # Writing
//
// [WriteFile] streams tensors to a temporary file in the target directory,
// fsyncs it and renames it over the target, so readers see either the old file
// or the complete new one. The header lists tensors sorted by name with
// contiguous offsets, padded with spaces so the data section starts 8-byte
// aligned; the same input always gives the same bytes. A tensor's bytes come
// from [WriteTensor].Data or, for tensors too large to hold, from a Fill
// callback that must write exactly the declared number of bytes.
// [WriteGroups] writes the same file from groups of tensors (a model's
// blocks) built one at a time, so that a writer holds one group, not all.
//
// # 16-bit floats
//
// bf16 → float32 and f16 → float32 are exact. float32 → bf16 and float32 → f16
// round to nearest, ties to even; NaN stays NaN (quieted), values past the
// largest finite half round to ±Inf, and tiny values go to f16 subnormals or
// ±0.
package safetensors
