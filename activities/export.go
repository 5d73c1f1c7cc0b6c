package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// ExportInput names the compressed blocks of a job.
type ExportInput struct {
	Job    recipe.Job  `json:"job"`
	Plan   store.Ref   `json:"plan"`
	Blocks []store.Ref `json:"blocks"` // factors of each block, in order
}

// ExportOutput describes the exported checkpoint.
type ExportOutput struct {
	Dir     string        `json:"dir"`
	Files   []recipe.File `json:"files"`
	Params  int64         `json:"params"` // parameters of the exported model
	Bytes   int64         `json:"bytes"`  // total size of its files
	Skipped bool          `json:"skipped"`
}

// Export assembles the compressed model from the original and the stored
// blocks, writes it to a temporary directory next to the output, reads it
// back and checks it, and only then moves it into place: the output
// directory never holds a partial checkpoint.
func (a *Activities) Export(ctx context.Context, in ExportInput) (ExportOutput, error) {
	job := in.Job
	r := job.Recipe
	shas := make([]string, len(in.Blocks))
	for i, b := range in.Blocks {
		shas[i] = b.SHA256
	}
	key := store.Key("export", Version, in.Plan.SHA256, shas, r.Export)
	if out, ok := a.exported(key, job); ok {
		a.log().Info("export already done", "job", job.ID, "dir", out.Dir)
		out.Skipped = true
		return out, nil
	}
	_, stop := a.heartbeat(ctx, Progress{Stage: "export", Phase: "assemble"})
	defer stop()
	var out ExportOutput
	err := guard(func() error {
		m, err := a.model(job)
		if err != nil {
			return err
		}
		if len(in.Blocks) != len(m.Blocks) {
			return badInput(fmt.Errorf("export: %d compressed blocks for a model with %d", len(in.Blocks), len(m.Blocks)))
		}
		comp := *m
		comp.Blocks = make([]*model.Block, len(m.Blocks))
		for i, ref := range in.Blocks {
			if comp.Blocks[i], err = a.Store.GetBlock(ref, m.Blocks[i]); err != nil {
				return a.storeError(err)
			}
		}
		exp := &comp
		if r.Export.Format == "dense" {
			exp = model.Densify(exp)
		}
		if err := canceled(ctx); err != nil {
			return err
		}
		if out, err = a.publish(job, exp); err != nil {
			return err
		}
		if _, err := a.Store.PutJSON(key, out); err != nil {
			return a.storeError(err)
		}
		return nil
	})
	if err != nil {
		return ExportOutput{}, err
	}
	a.log().Info("exported", "job", job.ID, "dir", out.Dir, "bytes", out.Bytes, "params", out.Params)
	return out, nil
}

// exported returns the recorded export of key when the output directory still
// holds exactly its files.
func (a *Activities) exported(key string, job recipe.Job) (ExportOutput, bool) {
	var out ExportOutput
	ref, ok, err := a.Store.Lookup(key)
	if err != nil || !ok || a.Store.GetJSON(ref, &out) != nil {
		return out, false
	}
	if id, _ := recipe.ReadMarker(out.Dir); id != job.ID || out.Dir != job.Recipe.Output {
		return out, false
	}
	for _, f := range out.Files {
		d, err := recipe.Digest(f.Path)
		if err != nil || d != f {
			return out, false
		}
	}
	return out, true
}

// publish saves m to a temporary directory next to the output, reads it back,
// and renames it into place, replacing an earlier export of the same job.
func (a *Activities) publish(job recipe.Job, m *model.Model) (ExportOutput, error) {
	dst := job.Recipe.Output
	parent := filepath.Dir(dst)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return ExportOutput{}, a.storeError(fmt.Errorf("export: %w", err))
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return ExportOutput{}, a.storeError(fmt.Errorf("export: %w", err))
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return ExportOutput{}, fmt.Errorf("export: %w", err)
	}
	dtype := recipe.SafetensorsDType(job.Recipe.Export.DType)
	if err := model.Save(m, tmp, dtype); err != nil {
		return ExportOutput{}, a.storeError(fmt.Errorf("export: %w", err))
	}
	marker, _ := json.Marshal(recipe.MarkerContent{ID: job.ID})
	if err := model.WriteFileAtomic(filepath.Join(tmp, recipe.Marker), append(marker, '\n')); err != nil {
		return ExportOutput{}, a.storeError(fmt.Errorf("export: %w", err))
	}
	// Checkpoints are for everyone to read (model.WriteFileAtomic leaves 0600).
	if entries, err := os.ReadDir(tmp); err == nil {
		for _, e := range entries {
			os.Chmod(filepath.Join(tmp, e.Name()), 0o644)
		}
	}
	back, err := model.Load(tmp, m.Backend)
	if err != nil {
		return ExportOutput{}, badInput(fmt.Errorf("export: the written checkpoint does not load back: %w", err))
	}
	if err := sameModel(m, back, job.Recipe.Export.DType == "float32"); err != nil {
		return ExportOutput{}, badInput(fmt.Errorf("export: the written checkpoint differs from the compressed model: %w", err))
	}
	// Move the checkpoint into place. An existing output must be an earlier
	// export of this job (validated at submission, checked again here).
	old := ""
	if _, err := os.Stat(dst); err == nil {
		entries, _ := os.ReadDir(dst)
		if id, _ := recipe.ReadMarker(dst); id != job.ID && len(entries) > 0 {
			return ExportOutput{}, badInput(fmt.Errorf("output %s exists and was not written by this job; remove it or choose another output", dst))
		}
		old = tmp + ".old"
		if err := os.Rename(dst, old); err != nil {
			return ExportOutput{}, fmt.Errorf("export: %w", err)
		}
		defer os.RemoveAll(old)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return ExportOutput{}, fmt.Errorf("export: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		if old != "" {
			os.Rename(old, dst)
		}
		return ExportOutput{}, fmt.Errorf("export: %w", err)
	}
	if d, err := os.Open(parent); err == nil {
		d.Sync()
		d.Close()
	}
	out := ExportOutput{Dir: dst, Params: NumParams(m)}
	entries, err := os.ReadDir(dst)
	if err != nil {
		return ExportOutput{}, fmt.Errorf("export: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		d, err := recipe.Digest(filepath.Join(dst, n))
		if err != nil {
			return ExportOutput{}, fmt.Errorf("export: %w", err)
		}
		out.Files = append(out.Files, d)
		out.Bytes += d.Bytes
	}
	return out, nil
}

// sameModel checks a checkpoint read back against the model written: the
// same layer types and ranks and, on the first few tokens, the same logits
// (exactly in float32, within rounding otherwise).
func sameModel(want, got *model.Model, exact bool) error {
	if len(want.Blocks) != len(got.Blocks) {
		return fmt.Errorf("%d blocks, want %d", len(got.Blocks), len(want.Blocks))
	}
	for i := range want.Blocks {
		for _, mod := range model.Modules {
			w, g := *want.Blocks[i].Linear(mod), *got.Blocks[i].Linear(mod)
			if fmt.Sprintf("%T", w) != fmt.Sprintf("%T", g) || w.NumParams() != g.NumParams() {
				return fmt.Errorf("layer %d %s is %T with %d parameters, want %T with %d", i, mod, g, g.NumParams(), w, w.NumParams())
			}
		}
	}
	n := min(16, want.Config.MaxPositions)
	seq := make([]int32, n)
	for i := range seq {
		seq[i] = int32((i*7919 + 1) % want.Config.VocabSize)
	}
	lw, err := want.Forward([][]int32{seq})
	if err != nil {
		return err
	}
	lg, err := got.Forward([][]int32{seq})
	if err != nil {
		return err
	}
	if exact {
		if !slices.Equal(lw, lg) {
			return fmt.Errorf("float32 logits differ")
		}
		return nil
	}
	var num, den float64
	for i := range lw {
		d := float64(lw[i]) - float64(lg[i])
		num += d * d
		den += float64(lw[i]) * float64(lw[i])
	}
	if rel := math.Sqrt(num / max(den, 1e-30)); !(rel < 0.1) {
		return fmt.Errorf("logits differ by %.3g (relative) after rounding", rel)
	}
	return nil
}

// NumParams counts a model's stored parameters (tied embeddings once).
func NumParams(m *model.Model) int64 {
	n := int64(len(m.Embed) + len(m.Norm))
	if !m.Config.TieWordEmbeddings {
		n += m.LMHead.NumParams()
	}
	for _, b := range m.Blocks {
		n += int64(len(b.AttnNorm) + len(b.MLPNorm))
		for _, mod := range model.Modules {
			n += (*b.Linear(mod)).NumParams()
		}
	}
	return n
}
