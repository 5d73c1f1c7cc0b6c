package recipe

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/tokenizer"
)

// Defaults of the keys a recipe may leave out.
const (
	DefaultCalibSequences = 128
	DefaultSeqLen         = 2048
	DefaultBatch          = 16
	DefaultEvalSequences  = 32
	DefaultAlpha          = 0.5
)

// Marker is the file an export leaves in the output directory, naming the
// job that wrote it; a rerun of that job may replace the directory, any other
// job must not.
const Marker = ".rankzip-job.json"

// MarkerContent is the JSON in Marker.
type MarkerContent struct {
	ID string `json:"id"`
}

// Load reads the recipe at path, validates it against the files it names,
// canonicalises it and digests its inputs. Every problem found is reported
// in one *Error.
func Load(file string) (*Job, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read recipe: %w", err)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, fmt.Errorf("read recipe: %w", err)
	}
	return LoadBytes(data, abs)
}

// LoadBytes is Load on the recipe's bytes; relative paths in it are
// resolved against the directory of file.
func LoadBytes(data []byte, file string) (*Job, error) {
	r, problems := parse(data)
	if r == nil {
		return nil, &Error{Path: file, Problems: problems}
	}
	v := &validator{r: r, dir: filepath.Dir(file), problems: problems}
	v.run()
	if len(v.problems) > 0 {
		return nil, &Error{Path: file, Problems: v.problems}
	}
	job, err := v.digest()
	if err != nil {
		return nil, err
	}
	if err := checkOutput(r.Output, job.ID); err != nil {
		return nil, &Error{Path: file, Problems: []string{err.Error()}}
	}
	return job, nil
}

type validator struct {
	r        *Recipe
	dir      string
	problems []string

	cfg         *model.Config
	modelFiles  []string
	calibTokens int
	tok         *tokenizer.Tokenizer // the model's, loaded for text data
	tokErr      string               // why it could not be loaded
}

func (v *validator) add(format string, args ...any) {
	v.problems = append(v.problems, fmt.Sprintf(format, args...))
}

func (v *validator) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(v.dir, p)
}

func (v *validator) run() {
	r := v.r
	if r.Model == "" {
		v.add("missing key \"model\": the checkpoint directory to compress")
	} else {
		r.Model = v.resolve(r.Model)
		v.model()
	}
	if r.Output == "" {
		v.add("missing key \"output\": the directory of the compressed checkpoint")
	} else {
		r.Output = v.resolve(r.Output)
		v.output()
	}
	v.calibration()
	v.evaluation()
	if len(r.Stages) == 0 {
		v.add("missing key \"stages\": at least one stage (implemented: %s)", joinMethods(Implemented))
	}
	v.order()
	for i := range r.Stages {
		v.stage(i, &r.Stages[i])
	}
	v.combine()
	v.export()
}

func (v *validator) model() {
	cfg, err := model.ReadConfig(v.r.Model)
	if err != nil {
		v.add("model: %v", err)
		return
	}
	ck, err := safetensors.OpenDir(v.r.Model)
	if err != nil {
		v.add("model: %v", err)
		return
	}
	defer ck.Close()
	if len(cfg.Factored) > 0 {
		v.add("model: %s is already a compressed (native) checkpoint; compress the original", v.r.Model)
	}
	v.cfg = cfg
	v.modelFiles = append([]string{filepath.Join(v.r.Model, "config.json")}, ck.Files()...)
	if idx := filepath.Join(v.r.Model, "model.safetensors.index.json"); fileExists(idx) {
		v.modelFiles = append(v.modelFiles, idx)
	}
}

func (v *validator) output() {
	out, mdl := v.r.Output, v.r.Model
	if out == mdl || strings.HasPrefix(mdl+string(filepath.Separator), out+string(filepath.Separator)) {
		v.add("output %s would overwrite the model %s", out, mdl)
		return
	}
	if st, err := os.Stat(out); err == nil && !st.IsDir() {
		v.add("output %s exists and is not a directory", out)
	}
}

func (v *validator) calibration() {
	c := &v.r.Calibration
	if c.Data == "" {
		v.add("calibration: missing key \"data\": a Parquet file with an input_ids column, or text (text_column)")
	}
	if c.Sequences == 0 {
		c.Sequences = DefaultCalibSequences
	}
	if c.Sequences < 0 {
		v.add("calibration.sequences %d must be positive", c.Sequences)
	}
	if c.Mode == "" {
		c.Mode = string(calib.Sequential)
	}
	if c.Mode != string(calib.Sequential) && c.Mode != string(calib.Original) {
		v.add("calibration.mode %q unknown (want sequential or original)", c.Mode)
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.Batch < 0 {
		v.add("calibration.batch %d must be positive", c.Batch)
	}
	if c.SeqLen < 0 {
		v.add("calibration.seq_len %d must be positive", c.SeqLen)
	}
	if v.cfg != nil {
		if c.SeqLen == 0 {
			c.SeqLen = min(DefaultSeqLen, v.cfg.MaxPositions)
		}
		if c.SeqLen > v.cfg.MaxPositions {
			v.add("calibration.seq_len %d exceeds the model's max_position_embeddings %d", c.SeqLen, v.cfg.MaxPositions)
		}
	}
	if c.Data == "" {
		return
	}
	c.Data = v.resolve(c.Data)
	c.TextColumn = v.textColumn("calibration", c.Data, c.TextColumn)
	if c.IsText() {
		if c.Sequences > 0 && c.SeqLen > 0 && v.text("calibration", c.Data, c.TextColumn, c.SeqLen) {
			// Packed rows are seq_len long; a dataset too short for
			// the sequences asked for fails when it is tokenized.
			v.calibTokens = c.Sequences * c.SeqLen
		}
		return
	}
	if c.Sequences <= 0 || c.SeqLen < 0 {
		return
	}
	seqs, err := readSequences(c.Data, c.Sequences, "calibration")
	if err != nil {
		v.add("%v%s", err, textHint(err))
		return
	}
	for _, s := range Truncate(seqs, c.SeqLen) {
		v.calibTokens += len(s)
	}
	v.tokens("calibration", c.Data, Truncate(seqs, c.SeqLen))
}

func (v *validator) evaluation() {
	e := v.r.Evaluation
	if e == nil {
		return
	}
	if e.Data == "" {
		v.add("evaluation: missing key \"data\": a Parquet file with an input_ids column, or text (text_column)")
		return
	}
	e.Data = v.resolve(e.Data)
	if e.Sequences == 0 {
		e.Sequences = DefaultEvalSequences
	}
	if e.Sequences < 0 {
		v.add("evaluation.sequences %d must be positive", e.Sequences)
		return
	}
	e.TextColumn = v.textColumn("evaluation", e.Data, e.TextColumn)
	if !e.IsText() {
		if e.SeqLen != 0 {
			v.add("evaluation.seq_len applies to text data only (text_column): rows of token ids are evaluated as they are")
		}
	} else {
		if e.SeqLen == 0 {
			e.SeqLen = v.r.Calibration.SeqLen
		}
		switch {
		case e.SeqLen < 0:
			v.add("evaluation.seq_len %d must be positive", e.SeqLen)
		case v.cfg != nil && e.SeqLen > v.cfg.MaxPositions:
			v.add("evaluation.seq_len %d exceeds the model's max_position_embeddings %d", e.SeqLen, v.cfg.MaxPositions)
		case e.SeqLen > 0:
			v.text("evaluation", e.Data, e.TextColumn, e.SeqLen)
		}
		return
	}
	seqs, err := readSequences(e.Data, e.Sequences, "evaluation")
	if err != nil {
		v.add("%v%s", err, textHint(err))
		return
	}
	v.tokens("evaluation", e.Data, seqs)
}

// textHint suggests text_column when token data lacks its input_ids column.
func textHint(err error) string {
	if strings.Contains(err.Error(), "no input_ids column") {
		return " (for a text dataset, name its column: text_column)"
	}
	return ""
}

// textColumn returns the canonical text column of a dataset: column as
// given, "text" for a plain text file (which has no columns), "" for token
// data.
func (v *validator) textColumn(what, data, column string) string {
	if !calib.IsTextFile(data) {
		return column
	}
	if column != "" {
		v.add("%s.text_column %q does not apply to %s: a plain text file has no columns (its documents are separated by blank lines)", what, column, data)
	}
	return "text"
}

// TokenizerFiles are the files of a model directory that determine its
// tokenization, in the order they are digested; the first is required.
var TokenizerFiles = []string{"tokenizer.json", "tokenizer_config.json"}

// text checks a text dataset and the model's tokenizer, which will tokenize
// it into rows of seqLen, without tokenizing it; it reports whether all is
// well.
func (v *validator) text(what, data, column string, seqLen int) bool {
	if v.cfg == nil {
		return false // the model's own problem is reported
	}
	ok := true
	if v.tok == nil && v.tokErr == "" {
		file := filepath.Join(v.r.Model, TokenizerFiles[0])
		if !fileExists(file) {
			v.tokErr = fmt.Sprintf("text data is tokenized with the model's own tokenizer, but %s does not exist (add the model's tokenizer.json, or give token ids: rankzip calib import --tokenizer DIR)", file)
		} else if tok, err := tokenizer.Load(v.r.Model); err != nil {
			v.tokErr = err.Error()
		} else {
			v.tok = tok
		}
	}
	if v.tok == nil {
		v.add("%s data %s: %s", what, data, v.tokErr)
		ok = false
	} else {
		if _, has := v.tok.EOS(); !has {
			v.add("%s data %s: the tokenizer has no eos_token (tokenizer_config.json): packing text needs one between documents", what, data)
			ok = false
		}
		if prefix, _ := v.tok.SpecialTokens(); seqLen <= len(prefix) {
			v.add("%s.seq_len %d leaves no room after the tokenizer's %d special tokens", what, seqLen, len(prefix))
			ok = false
		}
		if n := v.tok.VocabSize(); n > v.cfg.VocabSize {
			v.add("%s data %s: the model's tokenizer has %d ids, more than the model's vocab_size %d", what, data, n, v.cfg.VocabSize)
			ok = false
		}
	}
	if err := calib.CheckText(data, column); err != nil {
		v.add("%s data: %v", what, err)
		ok = false
	}
	return ok
}

// tokens checks token ids and lengths against the model.
func (v *validator) tokens(what, file string, seqs [][]int32) {
	if v.cfg == nil {
		return
	}
	if err := (&model.Model{Config: v.cfg}).CheckTokens(seqs); err != nil {
		v.add("%s data %s: %v", what, file, err)
	}
}

// readSequences reads the first n rows of a dataset and says when it has
// fewer.
func readSequences(file string, n int, what string) ([][]int32, error) {
	ds, err := calib.Open(file)
	if err != nil {
		return nil, fmt.Errorf("%s data: %w", what, err)
	}
	defer ds.Close()
	if have := ds.NumSequences(); have < int64(n) {
		return nil, fmt.Errorf("%s data %s has %d sequences; the recipe asks for %d", what, file, have, n)
	}
	seqs, err := ds.Read(n)
	if err != nil {
		return nil, fmt.Errorf("%s data: %w", what, err)
	}
	return seqs, nil
}

// Truncate cuts every sequence to at most n tokens (the slices are shared).
func Truncate(seqs [][]int32, n int) [][]int32 {
	out := make([][]int32, len(seqs))
	for i, s := range seqs {
		out[i] = s[:min(len(s), n)]
	}
	return out
}

// stage classes, in the order they must come.
func class(method Method) int {
	switch method {
	case MethodSVD, MethodLoRD:
		return 0
	case MethodPalu, MethodMLA:
		return 1
	case MethodRTN, MethodGPTQ:
		return 2
	}
	return 3 // eora
}

var className = []string{"low-rank factoring (svd, lord)", "KV-cache projection (palu, mla)", "quantization (rtn, gptq)", "error compensation (eora)"}

// order checks that stages can follow each other: at most one of each class,
// in class order, eora only after a quantization stage.
func (v *validator) order() {
	seen := map[int]int{} // class -> stage index
	prev := -1
	quant := false
	for i, s := range v.r.Stages {
		if _, ok := methodKeys[s.Method]; !ok {
			continue
		}
		c := class(s.Method)
		if j, dup := seen[c]; dup {
			v.add("stages[%d] (%s) cannot follow stages[%d] (%s): a recipe has at most one %s stage", i, s.Method, j, v.r.Stages[j].Method, className[c])
		} else if c < prev {
			v.add("stages[%d] (%s) cannot follow a %s stage: stages run in the order %s", i, s.Method, className[prev], strings.Join(className, ", then "))
		}
		seen[c] = i
		prev = max(prev, c)
		if c == 2 {
			quant = true
		}
		if s.Method == MethodEoRA && !quant {
			v.add("stages[%d] (eora) compensates quantization error: it needs an rtn or gptq stage before it", i)
		}
		if !slices.Contains(Implemented, s.Method) {
			v.add("stages[%d]: method %s is not implemented yet (implemented: %s)", i, s.Method, joinMethods(Implemented))
		}
	}
}

func (v *validator) stage(i int, s *Stage) {
	where := fmt.Sprintf("stages[%d] (%s)", i, s.Method)
	switch s.Method {
	case MethodSVD, MethodLoRD:
		v.lowRank(where, s)
	case MethodPalu:
		v.palu(where, s)
	case MethodMLA:
		v.mla(where, s)
	case MethodRTN, MethodGPTQ:
		v.quant(i, where, s)
	case MethodEoRA:
		v.eora(where, s)
	}
}

func (v *validator) lowRank(where string, s *Stage) {
	if s.Method == MethodSVD {
		if s.Variant == "" {
			s.Variant = "whiten"
		}
		if !slices.Contains([]string{"whiten", "asvd", "plain"}, s.Variant) {
			v.add("%s: variant %q unknown (want whiten, asvd or plain)", where, s.Variant)
		}
		switch {
		case s.Variant != "asvd" && s.Alpha != 0:
			v.add("%s: alpha applies to variant asvd only", where)
		case s.Variant == "asvd" && s.Alpha == 0:
			s.Alpha = DefaultAlpha
		case s.Variant == "asvd" && !(s.Alpha > 0 && s.Alpha <= 1):
			v.add("%s: alpha %v must be in (0, 1]", where, s.Alpha)
		}
	}
	mods, ok := v.targets(where, s)
	if ok {
		s.Targets = mods
	}
	switch {
	case s.Rank != 0 && s.KeepParams != 0:
		v.add("%s: give keep_params (a parameter budget) or rank (one rank for every target), not both", where)
	case s.Rank < 0:
		v.add("%s: rank %d must be positive", where, s.Rank)
	case s.Rank > 0:
		if s.RankSearch != "" {
			v.add("%s: rank_search applies to a keep_params budget, not to a fixed rank", where)
		}
	case s.KeepParams == 0:
		v.add("%s: missing key \"keep_params\": the fraction of the targeted parameters to keep, in (0, 1] (or rank)", where)
	case !(s.KeepParams > 0 && s.KeepParams <= 1):
		v.add("%s: keep_params %v must be in (0, 1]", where, s.KeepParams)
	}
	if s.Rank == 0 && ok && model.HasExperts(mods) {
		// Experts are calibrated one by one on their routed tokens; the
		// global, sensitivity and local searches calibrate by site
		// (compress/moe.go).
		if s.RankSearch == "" {
			s.RankSearch = "uniform"
		}
		if s.RankSearch != "uniform" {
			v.add("%s: rank_search %s is not implemented for expert targets (mlp.experts.*): use rank_search uniform or a fixed rank", where, s.RankSearch)
		}
	}
	if s.Rank == 0 {
		if s.RankSearch == "" {
			s.RankSearch = model.LowRankSearchFor(v.cfg) // the same default as compress.Options
		}
		if !slices.Contains(model.LowRankSearches, s.RankSearch) {
			v.add("%s: rank_search %q unknown (want one of %s)", where, s.RankSearch, strings.Join(model.LowRankSearches, ", "))
		}
		if v.cfg != nil && s.RankSearch == "fisher" {
			if err := v.cfg.Unsupported(model.FeatureBackward); err != nil {
				v.add("%s: rank_search fisher: %v; use sensitivity, local, global or uniform", where, err)
			}
		}
	}
	if v.cfg == nil || !ok {
		return
	}
	need, full := 0, 0
	for _, m := range mods {
		out, in := v.cfg.ModuleShape(m)
		need = max(need, in)
		full = max(full, min(out, in))
	}
	if s.Rank >= full {
		v.add("%s: rank %d is not below min(out, in) of any targeted matrix (at most %d): nothing would be compressed", where, s.Rank, full)
	}
	if v.calibTokens > 0 && v.calibTokens < need {
		v.add("%s: the calibration set gives %d tokens (sequences × seq_len); the targeted layers need at least %d (their largest input dimension) for full-rank statistics", where, v.calibTokens, need)
	}
}

func (v *validator) export() {
	e := &v.r.Export
	if e.Format == "" {
		e.Format = "native"
	}
	switch e.Format {
	case "native", "dense", "gptq", "deepseek-mla", "palu":
		v.exportFits()
	default:
		v.add("export.format %q unknown (want native, dense, gptq, deepseek-mla or palu)", e.Format)
	}
	if e.DType == "" {
		e.DType = defaultDType(v.cfg)
	}
	if !slices.Contains(DTypes, e.DType) {
		v.add("export.dtype %q unknown (want one of %s)", e.DType, strings.Join(DTypes, ", "))
	}
}

// defaultDType is the export dtype when the recipe names none: the model's
// own (transformers 5's "dtype" or 4.x's "torch_dtype", as model.Config.DType
// reads them) where it is an export dtype, else float32.
func defaultDType(cfg *model.Config) string {
	if cfg != nil && slices.Contains(DTypes, cfg.DType) {
		return cfg.DType
	}
	return "float32"
}

// DTypes are the export dtypes.
var DTypes = []string{"float32", "bfloat16", "float16"}

// SafetensorsDType maps an export dtype to its safetensors dtype.
func SafetensorsDType(dtype string) safetensors.DType {
	switch dtype {
	case "bfloat16":
		return safetensors.BF16
	case "float16":
		return safetensors.F16
	}
	return safetensors.F32
}

// digest hashes the inputs and derives the workflow id.
func (v *validator) digest() (*Job, error) {
	job := &Job{Recipe: *v.r}
	for _, f := range v.modelFiles {
		d, err := Digest(f)
		if err != nil {
			return nil, err
		}
		job.Model = append(job.Model, d)
	}
	var err error
	if job.Calibration, err = Digest(v.r.Calibration.Data); err != nil {
		return nil, err
	}
	if v.r.Evaluation != nil {
		d, err := Digest(v.r.Evaluation.Data)
		if err != nil {
			return nil, err
		}
		job.Evaluation = &d
	}
	if v.r.Calibration.IsText() || v.r.Evaluation != nil && v.r.Evaluation.IsText() {
		for i, name := range TokenizerFiles {
			f := filepath.Join(v.r.Model, name)
			if i > 0 && !fileExists(f) {
				continue
			}
			d, err := Digest(f)
			if err != nil {
				return nil, err
			}
			job.Tokenizer = append(job.Tokenizer, d)
		}
	}
	job.ID = deriveID(job.Recipe, job.Model, job.Calibration, job.Evaluation, job.Tokenizer)
	return job, nil
}

// Digest returns a file's sha256 and size.
func Digest(file string) (File, error) {
	f, err := os.Open(file)
	if err != nil {
		return File{}, fmt.Errorf("digest: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return File{}, fmt.Errorf("digest %s: %w", file, err)
	}
	return File{Path: file, SHA256: hex.EncodeToString(h.Sum(nil)), Bytes: n}, nil
}

// checkOutput refuses an existing, non-empty output directory unless job id
// wrote it.
func checkOutput(dir, id string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && len(entries) == 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("output: %w", err)
	}
	owner, _ := ReadMarker(dir)
	if owner == id {
		return nil
	}
	return fmt.Errorf("output %s already exists and was not written by this job; remove it or choose another output", dir)
}

// ReadMarker returns the id of the job that exported into dir, or "".
func ReadMarker(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, Marker))
	if err != nil {
		return "", err
	}
	var m MarkerContent
	if err := json.Unmarshal(data, &m); err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Join(dir, Marker), err)
	}
	return m.ID, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
