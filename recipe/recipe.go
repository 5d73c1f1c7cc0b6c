// Package recipe reads the YAML recipe of a compression job (DESIGN.md
// section 3), validates it against the files it names before any work
// starts, and turns it into a canonical, fully explicit form: paths absolute,
// target globs expanded to module names, every default filled in. The
// workflow id of a job is derived from that canonical form and the sha256
// digests of the model and data files, so the same recipe on the same inputs
// always names the same workflow.
package recipe

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
)

// Recipe is a compression job in canonical form. Its JSON encoding is what the
// workflow receives and what the workflow id is derived from.
type Recipe struct {
	Model       string      `yaml:"model" json:"model"`
	Calibration Calibration `yaml:"calibration" json:"calibration"`
	Evaluation  *Evaluation `yaml:"evaluation,omitempty" json:"evaluation,omitempty"`
	Output      string      `yaml:"output" json:"output"`
	Stages      []Stage     `yaml:"stages" json:"stages"`
	Export      Export      `yaml:"export" json:"export"`
}

// Calibration is the calibration set and how it is used.
type Calibration struct {
	Data      string `yaml:"data" json:"data"`
	Sequences int    `yaml:"sequences" json:"sequences"` // the first N rows [128]
	SeqLen    int    `yaml:"seq_len" json:"seq_len"`     // longer rows are cut [2048, at most max_position_embeddings]
	Mode      string `yaml:"mode" json:"mode"`           // sequential | original [sequential]
	Batch     int    `yaml:"batch" json:"batch"`         // sequences per forward batch [16]
	// TextColumn makes Data a text dataset (the Parquet column or JSONL key
	// holding the text; a .txt file needs none and gets "text"): it is
	// tokenized with the model's tokenizer.json and packed into rows of
	// SeqLen tokens, as "rankzip calib import --tokenizer" does.
	TextColumn string `yaml:"text_column,omitempty" json:"text_column,omitempty"`
}

// IsText reports whether the calibration data is text.
func (c Calibration) IsText() bool { return c.TextColumn != "" }

// Evaluation is the evaluation set; the exported model is compared with the
// original on its first Sequences rows.
type Evaluation struct {
	Data      string `yaml:"data" json:"data"`
	Sequences int    `yaml:"sequences" json:"sequences"` // [32]
	// TextColumn and SeqLen: a text dataset, as in Calibration; its rows are
	// SeqLen tokens [calibration.seq_len]. SeqLen applies to text only.
	TextColumn string `yaml:"text_column,omitempty" json:"text_column,omitempty"`
	SeqLen     int    `yaml:"seq_len,omitempty" json:"seq_len,omitempty"`
}

// IsText reports whether the evaluation data is text.
func (e Evaluation) IsText() bool { return e.TextColumn != "" }

// Export says how the compressed checkpoint is written.
type Export struct {
	Format string `yaml:"format" json:"format"` // native | dense [native]
	DType  string `yaml:"dtype" json:"dtype"`   // float32 | bfloat16 | float16 [the model's torch_dtype, else float32]
}

// Stage is one compression stage. It holds the keys of every method; a
// method accepts only its own (see methodKeys).
type Stage struct {
	Method Method `yaml:"method" json:"method"`

	// svd, lord
	Variant    string   `yaml:"variant,omitempty" json:"variant,omitempty"`
	Targets    []string `yaml:"targets,omitempty" json:"targets,omitempty"`
	KeepParams float64  `yaml:"keep_params,omitempty" json:"keep_params,omitempty"`
	Rank       int      `yaml:"rank,omitempty" json:"rank,omitempty"` // also eora
	RankSearch string   `yaml:"rank_search,omitempty" json:"rank_search,omitempty"`
	Alpha      float64  `yaml:"alpha,omitempty" json:"alpha,omitempty"`

	// palu
	KVKeep          float64 `yaml:"kv_keep,omitempty" json:"kv_keep,omitempty"`
	GroupSize       *int    `yaml:"group_size,omitempty" json:"group_size,omitempty"` // also rtn, gptq
	LatentBits      int     `yaml:"latent_bits,omitempty" json:"latent_bits,omitempty"`
	LatentGroupSize int     `yaml:"latent_group_size,omitempty" json:"latent_group_size,omitempty"`
	Hadamard        *bool   `yaml:"hadamard,omitempty" json:"hadamard,omitempty"`

	// mla
	KVLoraRank    int   `yaml:"kv_lora_rank,omitempty" json:"kv_lora_rank,omitempty"`
	QKRopeHeadDim int   `yaml:"qk_rope_head_dim,omitempty" json:"qk_rope_head_dim,omitempty"`
	RoRoPE        *bool `yaml:"rorope,omitempty" json:"rorope,omitempty"`
	FreqFold      int   `yaml:"freqfold,omitempty" json:"freqfold,omitempty"`
	BKV           *bool `yaml:"bkv,omitempty" json:"bkv,omitempty"`
	// Rotation chooses the key dims that keep RoPE: none, keys (RoRoPE's
	// PCA) or scores [scores; none when rorope is false].
	Rotation string `yaml:"rotation,omitempty" json:"rotation,omitempty"`

	// rtn, gptq
	Bits     int     `yaml:"bits,omitempty" json:"bits,omitempty"`
	Sym      *bool   `yaml:"sym,omitempty" json:"sym,omitempty"`
	ActOrder *bool   `yaml:"act_order,omitempty" json:"act_order,omitempty"`
	Damp     float64 `yaml:"damp,omitempty" json:"damp,omitempty"`

	// eora
	RankOverrides map[string]int `yaml:"rank_overrides,omitempty" json:"rank_overrides,omitempty"`

	keys []string // the keys the recipe file gave, in order
	line int      // line of the stage in the recipe file
}

// File is an input file and its digest.
type File struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Bytes  int64  `json:"bytes"`
}

// Job is a validated recipe with the digests of its inputs and the workflow
// id they determine.
type Job struct {
	ID     string `json:"id"`
	Recipe Recipe `json:"recipe"`
	// Model lists the checkpoint files (config.json and safetensors), then
	// the calibration and evaluation data, each with its sha256.
	Model       []File `json:"model"`
	Calibration File   `json:"calibration"`
	Evaluation  *File  `json:"evaluation,omitempty"`
	// Tokenizer holds the model's tokenizer.json and, if present,
	// tokenizer_config.json when the calibration or evaluation data is text.
	Tokenizer []File `json:"tokenizer,omitempty"`
}

// IDPrefix starts every workflow id derived from a recipe.
const IDPrefix = "rankzip-"

// deriveID hashes the canonical recipe and the input digests. Paths take
// part through the recipe (an output elsewhere is another job); the inputs'
// contents take part through their digests.
func deriveID(r Recipe, model []File, cal File, ev *File, tok []File) string {
	h := sha256.New()
	enc := json.NewEncoder(h)
	// Encoding plain structs cannot fail.
	_ = enc.Encode(r)
	for _, f := range model {
		fmt.Fprintf(h, "model %s %s %d\n", f.Path, f.SHA256, f.Bytes)
	}
	fmt.Fprintf(h, "calibration %s %d\n", cal.SHA256, cal.Bytes)
	if ev != nil {
		fmt.Fprintf(h, "evaluation %s %d\n", ev.SHA256, ev.Bytes)
	}
	for _, f := range tok {
		fmt.Fprintf(h, "tokenizer %s %s %d\n", filepath.Base(f.Path), f.SHA256, f.Bytes)
	}
	return IDPrefix + hex.EncodeToString(h.Sum(nil))[:24]
}

// Error lists every problem found in a recipe.
type Error struct {
	Path     string
	Problems []string
}

func (e *Error) Error() string {
	var b strings.Builder
	n := len(e.Problems)
	fmt.Fprintf(&b, "recipe %s: %d problem", e.Path, n)
	if n != 1 {
		b.WriteString("s")
	}
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p)
	}
	return b.String()
}
