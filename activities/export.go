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

	"github.com/rankzip/rankzip/internal/perm"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/model/safetensors"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// ExportInput names the compressed blocks of a job.
type ExportInput struct {
	Job    recipe.Job  `json:"job"`
	Plan   store.Ref   `json:"plan"`
	Blocks []store.Ref `json:"blocks"` // each block after the first stage, in order
	// Later holds, for every later stage, each block's artifact
	// (Later[j][i]: block i after stage j+1).
	Later [][]store.Ref `json:"later,omitempty"`
}

// ExportOutput describes the exported checkpoint.
type ExportOutput struct {
	Dir     string        `json:"dir"`
	Files   []recipe.File `json:"files"`
	Params  int64         `json:"params"` // parameters of the exported model
	Bytes   int64         `json:"bytes"`  // total size of its files
	Skipped bool          `json:"skipped"`
	// HostQueue is the task queue of the host that holds Dir (the
	// exporting worker's Activities.HostQueue): Evaluate and Report, which
	// read and write Dir, go there. Empty when the worker has none.
	HostQueue string `json:"host_queue,omitempty"`
}

// AdapterDir is the directory of the EoRA adapter inside a gptq export.
const AdapterDir = "eora"

// Export assembles the compressed model from the original and the stored
// blocks, writes it to a temporary directory next to the output, reads it
// back and checks it, and only then moves it into place: the output
// directory never holds a partial checkpoint.
func (a *Activities) Export(ctx context.Context, in ExportInput) (ExportOutput, error) {
	job := in.Job
	r := job.Recipe
	// The export holds the original model's untouched tensors too, so the
	// model's digest is part of the key.
	parts := []any{Version, ModelDigest(job), in.Plan.SHA256, shas(in.Blocks), r.Export}
	if len(in.Later) > 0 {
		var later [][]string
		for _, l := range in.Later {
			later = append(later, shas(l))
		}
		parts = append(parts, later)
	}
	key := store.Key("export", parts...)
	if out, ok := a.exported(key, job); ok {
		a.log().Info("export already done", "job", job.ID, "dir", out.Dir)
		out.Skipped, out.HostQueue = true, a.HostQueue
		return out, nil
	}
	_, stop := a.heartbeat(ctx, Progress{Stage: "export", Phase: "assemble"}, 0)
	defer stop()
	var out ExportOutput
	err := a.guard(func() error {
		m, err := a.model(job)
		if err != nil {
			return err
		}
		if len(in.Blocks) != len(m.Blocks) {
			return badInput(fmt.Errorf("export: %d compressed blocks for a model with %d", len(in.Blocks), len(m.Blocks)))
		}
		comp, err := a.assemble(job, m, append([][]store.Ref{in.Blocks}, in.Later...))
		if err != nil {
			return err
		}
		if err := canceled(ctx); err != nil {
			return err
		}
		dtype := recipe.SafetensorsDType(r.Export.DType)
		exact := r.Export.DType == "float32"
		switch r.Export.Format {
		case "gptq":
			out, err = a.publishGPTQ(job, comp, dtype)
		case "palu":
			out, err = a.publish(job, comp, func(dir string) error { return model.SavePalu(comp, dir, dtype) }, exact)
		case "dense":
			var exp *model.Model
			if exp, err = Densify(comp); err != nil {
				return badInput(fmt.Errorf("export: %w", err))
			}
			out, err = a.publish(job, exp, func(dir string) error { return model.Save(exp, dir, dtype) }, exact)
		default:
			out, err = a.publishNative(job, comp, dtype, exact)
		}
		if err != nil {
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
	out.HostQueue = a.HostQueue // not in the stored record: another host may export the same key
	a.log().Info("exported", "job", job.ID, "dir", out.Dir, "bytes", out.Bytes, "params", out.Params)
	return out, nil
}

// splitAdapters returns comp with every EoRA-adapted layer replaced by the
// layer it wraps, and the adapters: they go to their own PEFT directory
// (AdapterDir) beside the checkpoint.
func splitAdapters(comp *model.Model) (*model.Model, []gptq.Adapter) {
	base := *comp
	base.Blocks = make([]*model.Block, len(comp.Blocks))
	var adapters []gptq.Adapter
	for i, b := range comp.Blocks {
		nb := *b
		for _, mod := range b.Modules() {
			if ad, ok := (*nb.Linear(mod)).(*gptq.Adapted); ok {
				adapters = append(adapters, gptq.Adapter{Module: model.ModuleName(i, mod), A: ad.A, B: ad.B})
				*nb.Linear(mod) = ad.Base
			}
		}
		base.Blocks[i] = &nb
	}
	return &base, adapters
}

// publishNative writes rankzip's native layout (factored, Palu and
// quantized layers) with EoRA's corrections, if any, as a PEFT adapter.
func (a *Activities) publishNative(job recipe.Job, comp *model.Model, dtype safetensors.DType, exact bool) (ExportOutput, error) {
	base, adapters := splitAdapters(comp)
	return a.publish(job, comp, func(dir string) error {
		if err := model.Save(base, dir, dtype); err != nil {
			return err
		}
		if len(adapters) == 0 {
			return nil
		}
		return gptq.WriteAdapter(filepath.Join(dir, AdapterDir), gptq.BesideBase, adapters, dtype)
	}, exact)
}

// publishGPTQ exports a quantized model as a GPTQ v1 checkpoint and its EoRA
// corrections, if any, as a PEFT adapter in AdapterDir.
func (a *Activities) publishGPTQ(job recipe.Job, comp *model.Model, dtype safetensors.DType) (ExportOutput, error) {
	r := job.Recipe
	qi := QuantStage(r)
	if qi < 0 {
		return ExportOutput{}, badInput(fmt.Errorf("export: format gptq needs an rtn or gptq stage"))
	}
	o, _ := QuantOptions(r, qi)
	qc, err := gptq.NewQuantizeConfig(o.Bits, o.GroupSize, false, o.Sym)
	if err != nil {
		return ExportOutput{}, badInput(fmt.Errorf("export: %w", err))
	}
	base, adapters := splitAdapters(comp)
	write := func(dir string) error {
		if err := gptq.Export(base, dir, dtype, qc); err != nil {
			return err
		}
		if len(adapters) == 0 {
			return nil
		}
		return gptq.WriteAdapter(filepath.Join(dir, AdapterDir), gptq.BesideBase, adapters, dtype)
	}
	// Scales are float16 in the format and methods/quant makes them so: in
	// float32 the checkpoint reproduces the model up to summation order.
	return a.publish(job, comp, write, dtype == safetensors.F32)
}

// LoadExport reads an exported checkpoint, a GPTQ one through gptq.Load and
// any other through model.Load, with its EoRA adapter applied when present.
func LoadExport(dir string, k kernels.Backend) (*model.Model, error) {
	load := model.Load
	if gptq.IsCheckpoint(dir) {
		load = gptq.Load
	}
	m, err := load(dir, k)
	if err != nil {
		return nil, err
	}
	adir := filepath.Join(dir, AdapterDir)
	if _, err := os.Stat(filepath.Join(adir, "adapter_config.json")); err != nil {
		return m, nil
	}
	adapters, _, err := gptq.ReadAdapter(adir)
	if err != nil {
		return nil, err
	}
	return gptq.ApplyAdapters(m, adapters)
}

// Densify returns a copy of m with every linear a dense one: factored
// layers multiplied back (model.Densify), quantized ones dequantized, Palu's
// grouped ones and EoRA's adapted ones folded into one weight.
func Densify(m *model.Model) (*model.Model, error) {
	out := model.Densify(m)
	k := m.Backend
	for i, b := range out.Blocks {
		mods := b.Modules() // an MLA block has no k/v
		if b.MoE != nil {
			b.MoE = b.MoE.Clone() // out shares m's experts until here
			mods = m.Config.TargetModules()
		}
		for _, mod := range mods {
			l := b.Linear(mod)
			d, err := denseOf(k, *l)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", model.ModuleName(i, mod), err)
			}
			*l = d
		}
	}
	return out, nil
}

func denseOf(k kernels.Backend, l model.Linear) (model.Linear, error) {
	switch l := l.(type) {
	case *model.Dense:
		return l, nil
	case *model.Quantized:
		return model.NewDense(l.Out(), l.In(), l.Dequantize(), l.Bias), nil
	case *model.Grouped:
		if l.LatentBits != 0 {
			return nil, fmt.Errorf("a Palu layer with a %d-bit latent cache has no dense form", l.LatentBits)
		}
		out, in := l.Out(), l.In()
		w := make([]float32, out*in)
		off := 0
		for j, u := range l.Ups {
			// Rows of group j: Up_j (rows × r_j) times the r_j rows of Down.
			k.Sgemm(false, false, u.Out(), in, u.In(), 1, u.Weight, u.In(), l.Down.Weight[off*in:], in, 0, w[j*u.Out()*in:], in)
			off += u.In()
		}
		return model.NewDense(out, in, w, l.Bias), nil
	case *gptq.Adapted:
		base, err := denseOf(k, l.Base)
		if err != nil {
			return nil, err
		}
		d := base.(*model.Dense)
		r := l.A.Out()
		w := slices.Clone(d.Weight)
		k.Sgemm(false, false, l.Out(), l.In(), r, 1, l.B.Weight, r, l.A.Weight, l.In(), 1, w, l.In())
		return model.NewDense(l.Out(), l.In(), w, d.Bias), nil
	case *model.Factored:
		w := make([]float32, l.Out()*l.In())
		k.Sgemm(false, false, l.Out(), l.In(), l.Rank(), 1, l.B.Weight, l.Rank(), l.A.Weight, l.In(), 0, w, l.In())
		return model.NewDense(l.Out(), l.In(), w, l.B.Bias), nil
	}
	return nil, fmt.Errorf("a %T layer has no dense form", l)
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
func (a *Activities) publish(job recipe.Job, m *model.Model, write func(dir string) error, exact bool) (ExportOutput, error) {
	dst := job.Recipe.Output
	parent := filepath.Dir(dst)
	if err := os.MkdirAll(parent, 0o777); err != nil {
		return ExportOutput{}, a.storeError(fmt.Errorf("export: %w", err))
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return ExportOutput{}, a.storeError(fmt.Errorf("export: %w", err))
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, perm.Dir()); err != nil {
		return ExportOutput{}, fmt.Errorf("export: %w", err)
	}
	if err := write(tmp); err != nil {
		return ExportOutput{}, a.storeError(fmt.Errorf("export: %w", err))
	}
	marker, _ := json.Marshal(recipe.MarkerContent{ID: job.ID})
	if err := model.WriteFileAtomic(filepath.Join(tmp, recipe.Marker), append(marker, '\n')); err != nil {
		return ExportOutput{}, a.storeError(fmt.Errorf("export: %w", err))
	}
	// Checkpoints get the modes of files the user creates (0666 and 0777
	// under the umask), whatever wrote them.
	filepath.WalkDir(tmp, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != tmp {
			mode := perm.File()
			if d.IsDir() {
				mode = perm.Dir()
			}
			os.Chmod(p, mode)
		}
		return nil
	})
	if err := checkExport(tmp, m, exact); err != nil {
		return ExportOutput{}, err
	}
	// Move the checkpoint into place. An existing output must be an earlier
	// export of this job (validated at submission, checked again here).
	old := ""
	if _, err := os.Stat(dst); err == nil {
		// An output that cannot be listed is not taken for empty: it
		// could hold anything, and is about to be replaced.
		entries, err := os.ReadDir(dst)
		if err != nil {
			return ExportOutput{}, badInput(fmt.Errorf("output %s exists and cannot be read (%w); fix its permissions, remove it or choose another output", dst, err))
		}
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
	// Every file, in lexical order (an adapter directory's too).
	err = filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := recipe.Digest(p)
		if err != nil {
			return err
		}
		out.Files = append(out.Files, f)
		out.Bytes += f.Bytes
		return nil
	})
	if err != nil {
		return ExportOutput{}, fmt.Errorf("export: %w", err)
	}
	return out, nil
}

// checkExport reads the checkpoint written in dir back and checks it
// against m, the model written. A GPTQ checkpoint or one with an EoRA
// adapter is read whole (gptq.Load, gptq.ApplyAdapters); any other is read
// and checked one block at a time, so the check holds one block of the
// checkpoint in float32 whatever the model's depth.
func checkExport(dir string, m *model.Model, exact bool) error {
	differs := func(err error) error {
		return badInput(fmt.Errorf("export: the written checkpoint differs from the compressed model: %w", err))
	}
	_, aerr := os.Stat(filepath.Join(dir, AdapterDir, "adapter_config.json"))
	if gptq.IsCheckpoint(dir) || aerr == nil {
		back, err := LoadExport(dir, m.Backend)
		if err != nil {
			return badInput(fmt.Errorf("export: the written checkpoint does not load back: %w", err))
		}
		if err := sameModel(m, back, exact); err != nil {
			return differs(err)
		}
		return nil
	}
	r, err := model.Open(dir)
	if err != nil {
		return badInput(fmt.Errorf("export: the written checkpoint does not load back: %w", err))
	}
	defer r.Close()
	got, err := r.Model(m.Backend)
	if err != nil {
		return badInput(fmt.Errorf("export: the written checkpoint does not load back: %w", err))
	}
	if err := sameByBlock(m, got, r.Config.NumLayers, r.Block, exact); err != nil {
		return differs(err)
	}
	return nil
}

// sameModel checks a checkpoint read back whole against the model written,
// as sameByBlock does.
func sameModel(want, got *model.Model, exact bool) error {
	block := func(i int) (*model.Block, error) { return got.Blocks[i], nil }
	return sameByBlock(want, got, len(got.Blocks), block, exact)
}

// sameByBlock checks a checkpoint read back against the model written: the
// same layer types and ranks and, on the first few tokens, the same logits
// (exactly in float32, within rounding otherwise). got holds the
// checkpoint's embeddings and head; block reads its blocks, one at a time,
// each run on its own hidden states beside want's.
func sameByBlock(want, got *model.Model, blocks int, block func(int) (*model.Block, error), exact bool) error {
	if len(want.Blocks) != blocks {
		return fmt.Errorf("%d blocks, want %d", blocks, len(want.Blocks))
	}
	n := min(16, want.Config.MaxPositions)
	seq := make([]int32, n)
	for i := range seq {
		seq[i] = int32((i*7919 + 1) % want.Config.VocabSize)
	}
	hw, err := want.EmbedTokens([][]int32{seq})
	if err != nil {
		return err
	}
	hg, err := got.EmbedTokens([][]int32{seq})
	if err != nil {
		return err
	}
	for i, wb := range want.Blocks {
		gb, err := block(i)
		if err != nil {
			return err
		}
		if err := sameLayers(i, wb, gb); err != nil {
			return err
		}
		hw, hg = want.RunBlock(wb, hw, nil), got.RunBlock(gb, hg, nil)
	}
	lw, lg := want.Logits(hw), got.Logits(hg)
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

// sameLayers checks that block got, read back as layer i, has the layer
// types and parameter counts of want.
func sameLayers(i int, want, got *model.Block) error {
	if (want.MLA == nil) != (got.MLA == nil) || want.NumParams() != got.NumParams() {
		return fmt.Errorf("layer %d: latent attention %v with %d parameters, want %v with %d", i,
			got.MLA != nil, got.NumParams(), want.MLA != nil, want.NumParams())
	}
	for _, mod := range want.Modules() {
		w, g := *want.Linear(mod), *got.Linear(mod)
		if fmt.Sprintf("%T", w) != fmt.Sprintf("%T", g) || w.NumParams() != g.NumParams() {
			return fmt.Errorf("layer %d %s is %T with %d parameters, want %T with %d", i, mod, g, g.NumParams(), w, w.NumParams())
		}
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
		n += b.NumParams()
	}
	return n
}
