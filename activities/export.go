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

	"github.com/rankzip/rankzip/compress"
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

// Export writes the compressed model, the original with the stored blocks
// applied, to a temporary directory next to the output, reads it back and
// checks it, and only then moves it into place: the output directory never
// holds a partial checkpoint. The model is built, written and checked one
// block at a time (each read from the original's mapped files with its
// stored layers applied, then let go), so the export holds one block
// whatever the depth; latent attention (MLA), whose layout is checked across
// all blocks at once, is assembled whole.
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
		src, err := a.openCompressed(ctx, job, append([][]store.Ref{in.Blocks}, in.Later...))
		if err != nil {
			return err
		}
		defer src.close()
		if out, err = a.export(job, src, mayHoldMLA(job, src.Top)); err != nil {
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

// mayHoldMLA reports whether the compressed model may hold latent
// attention: an mla stage, or a DeepSeek-MLA original.
func mayHoldMLA(job recipe.Job, top *model.Model) bool {
	if top.Config.MLA != nil {
		return true
	}
	for _, st := range job.Recipe.Stages {
		if st.Method == recipe.MethodMLA {
			return true
		}
	}
	return false
}

// export writes the compressed model src reads in the recipe's format:
// block by block or, when whole, assembled whole first (the way every
// export went before the block-by-block writers; the tests compare both).
func (a *Activities) export(job recipe.Job, src *compressed, whole bool) (ExportOutput, error) {
	r := job.Recipe
	dtype := recipe.SafetensorsDType(r.Export.DType)
	exact := r.Export.DType == "float32"
	comp := src.streamed()
	if whole {
		m, err := src.assemble()
		if err != nil {
			return ExportOutput{}, err
		}
		comp = held(m)
	}
	switch r.Export.Format {
	case "gptq":
		return a.publishGPTQ(job, comp, dtype)
	case "palu":
		return a.publish(job, comp, func(dir string) error {
			if whole {
				return model.SavePalu(comp.whole, dir, dtype)
			}
			return model.SavePaluBlocks(comp.Top, comp.Layers(), comp.Block, dir, dtype)
		}, exact)
	case "dense":
		if whole {
			d, err := Densify(comp.whole)
			if err != nil {
				return ExportOutput{}, badInput(fmt.Errorf("export: %w", err))
			}
			exp := held(d)
			return a.publish(job, exp, func(dir string) error { return model.Save(d, dir, dtype) }, exact)
		}
		exp := comp.densified()
		return a.publish(job, exp, func(dir string) error { return model.SaveBlocks(exp.Top, exp.Layers(), exp.Block, dir, dtype) }, exact)
	}
	return a.publishNative(job, comp, dtype, exact)
}

// compressed reads the compressed model one block at a time: block i is
// the original's, read from its mapped files (model.Reader, which lets the
// pages go once converted), with every stage's stored layers applied.
type compressed struct {
	*modelSource
	ctx context.Context
}

// openCompressed opens the job's original model and checks that every
// stage has one stored block per block of it.
func (a *Activities) openCompressed(ctx context.Context, job recipe.Job, stages [][]store.Ref) (*compressed, error) {
	src, err := a.openSource(job)
	if err != nil {
		return nil, err
	}
	if err := src.applyStages(a, stages); err != nil {
		src.Close()
		return nil, err
	}
	return &compressed{modelSource: src, ctx: ctx}, nil
}

func (c *compressed) close() { c.Close() }

// block returns compressed block i, read afresh: the caller may let it go.
func (c *compressed) block(i int) (*model.Block, error) {
	if err := canceled(c.ctx); err != nil {
		return nil, err
	}
	return c.Block(i)
}

// assemble returns the whole compressed model.
func (c *compressed) assemble() (*model.Model, error) {
	return c.streamed().ReadAll()
}

// streamed is the compressed model read block by block, checking for
// cancellation before each block.
func (c *compressed) streamed() byBlock {
	return byBlock{Source: compress.Source{Top: c.Top, Block: c.block}}
}

// byBlock is a model read one block at a time (compress.Source: each block
// read afresh) or, when whole is set, held whole and read from it.
type byBlock struct {
	compress.Source
	whole *model.Model
}

// held is m, held whole, read block by block.
func held(m *model.Model) byBlock {
	return byBlock{Source: compress.Whole(m), whole: m}
}

// densified is m with each block densified (Densify) as it is read.
func (m byBlock) densified() byBlock {
	d := m
	d.whole = nil
	d.Block = func(i int) (*model.Block, error) {
		b, err := m.Block(i)
		if err != nil {
			return nil, err
		}
		one, err := Densify(&model.Model{Config: m.Top.Config, Backend: m.Top.Backend, Blocks: []*model.Block{b}})
		if err != nil {
			return nil, badInput(fmt.Errorf("export: %w", err))
		}
		return one.Blocks[0], nil
	}
	return d
}

// splitBlock returns block b (layer i) with every EoRA-adapted layer
// replaced by the layer it wraps, and the adapters: they go to their own
// PEFT directory (AdapterDir) beside the checkpoint.
func splitBlock(i int, b *model.Block) (*model.Block, []gptq.Adapter) {
	nb := *b
	var adapters []gptq.Adapter
	for _, mod := range b.Modules() {
		if ad, ok := (*nb.Linear(mod)).(*gptq.Adapted); ok {
			adapters = append(adapters, gptq.Adapter{Module: model.ModuleName(i, mod), A: ad.A, B: ad.B})
			*nb.Linear(mod) = ad.Base
		}
	}
	return &nb, adapters
}

// withoutAdapters is m with its EoRA adapters split off each block as it is
// read (splitBlock); adapters returns them, in layer order, once every block
// has been read. The adapters are small (rank × (in + out) per layer), so
// they are kept.
func withoutAdapters(m byBlock) (base byBlock, adapters func() []gptq.Adapter) {
	byLayer := make([][]gptq.Adapter, m.Layers())
	base = m
	base.whole = nil
	base.Block = func(i int) (*model.Block, error) {
		b, err := m.Block(i)
		if err != nil {
			return nil, err
		}
		nb, ads := splitBlock(i, b)
		byLayer[i] = ads // the same on every read of the block
		return nb, nil
	}
	return base, func() []gptq.Adapter { return slices.Concat(byLayer...) }
}

// publishNative writes rankzip's native layout (factored, Palu and
// quantized layers) with EoRA's corrections, if any, as a PEFT adapter.
func (a *Activities) publishNative(job recipe.Job, comp byBlock, dtype safetensors.DType, exact bool) (ExportOutput, error) {
	base, adapters := withoutAdapters(comp)
	return a.publish(job, comp, func(dir string) error {
		var err error
		if comp.whole != nil {
			// Save checks a whole model's latent attention across blocks.
			var w *model.Model
			if w, err = base.ReadAll(); err == nil {
				err = model.Save(w, dir, dtype)
			}
		} else {
			err = model.SaveBlocks(base.Top, base.Layers(), base.Block, dir, dtype)
		}
		if err != nil {
			return err
		}
		return writeAdapters(dir, adapters(), dtype)
	}, exact)
}

// writeAdapters writes EoRA's corrections, if any, as a PEFT adapter in
// dir's AdapterDir.
func writeAdapters(dir string, adapters []gptq.Adapter, dtype safetensors.DType) error {
	if len(adapters) == 0 {
		return nil
	}
	return gptq.WriteAdapter(filepath.Join(dir, AdapterDir), gptq.BesideBase, adapters, dtype)
}

// publishGPTQ exports a quantized model as a GPTQ v1 checkpoint and its EoRA
// corrections, if any, as a PEFT adapter in AdapterDir.
func (a *Activities) publishGPTQ(job recipe.Job, comp byBlock, dtype safetensors.DType) (ExportOutput, error) {
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
	base, adapters := withoutAdapters(comp)
	write := func(dir string) error {
		var err error
		if comp.whole != nil {
			var w *model.Model
			if w, err = base.ReadAll(); err == nil {
				err = gptq.Export(w, dir, dtype, qc)
			}
		} else {
			err = gptq.ExportBlocks(base.Top, base.Layers(), base.Block, dir, dtype, qc)
		}
		if err != nil {
			return err
		}
		return writeAdapters(dir, adapters(), dtype)
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

// publish writes m to a temporary directory next to the output, reads it
// back, and renames it into place, replacing an earlier export of the same
// job.
func (a *Activities) publish(job recipe.Job, m byBlock, write func(dir string) error, exact bool) (ExportOutput, error) {
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
	params, err := checkExport(tmp, m, exact)
	if err != nil {
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
	out := ExportOutput{Dir: dst, Params: params}
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

// checkExport reads the checkpoint written in dir back as LoadExport does
// (a GPTQ one through gptq's reader, any other through model's, with its
// EoRA adapter applied when present), checks it against m, the model
// written, and returns m's parameter count. Both are read one block at a
// time, so the check holds one block of each whatever the depth.
func checkExport(dir string, m byBlock, exact bool) (int64, error) {
	src, done, err := openExport(dir, m.Top.Backend)
	if err != nil {
		return 0, badInput(fmt.Errorf("export: the written checkpoint does not load back: %w", err))
	}
	defer done()
	return sameByBlock(m, src.Top, src.Top.Config.NumLayers, src.Block, exact)
}

// differs is the error of a checkpoint that does not read back as the model
// written.
func differs(err error) error {
	return badInput(fmt.Errorf("export: the written checkpoint differs from the compressed model: %w", err))
}

// sameByBlock checks a checkpoint read back against the model written: the
// same layer types and ranks and, on the first few tokens, the same logits
// (exactly in float32, within rounding otherwise). got holds the
// checkpoint's embeddings and head; block reads its blocks, one at a time,
// each run on its own hidden states beside want's. It returns want's
// parameter count (NumParams); a difference is a differs error, one reading
// want's blocks is returned as it is.
func sameByBlock(want byBlock, got *model.Model, n int, block func(int) (*model.Block, error), exact bool) (int64, error) {
	if want.Layers() != n {
		return 0, differs(fmt.Errorf("%d blocks, want %d", n, want.Layers()))
	}
	top := want.Top
	params := NumParams(&model.Model{Config: top.Config, Embed: top.Embed, Norm: top.Norm, LMHead: top.LMHead})
	seqLen := min(16, top.Config.MaxPositions)
	seq := make([]int32, seqLen)
	for i := range seq {
		seq[i] = int32((i*7919 + 1) % top.Config.VocabSize)
	}
	hw, err := top.EmbedTokens([][]int32{seq})
	if err != nil {
		return 0, differs(err)
	}
	hg, err := got.EmbedTokens([][]int32{seq})
	if err != nil {
		return 0, differs(err)
	}
	for i := range n {
		wb, err := want.Block(i)
		if err != nil {
			return 0, err
		}
		gb, err := block(i)
		if err != nil {
			return 0, differs(err)
		}
		if err := sameLayers(i, wb, gb); err != nil {
			return 0, differs(err)
		}
		params += wb.NumParams()
		hw, hg = top.RunBlock(wb, hw, nil), got.RunBlock(gb, hg, nil)
	}
	lw, lg := top.Logits(hw), got.Logits(hg)
	if exact {
		if !slices.Equal(lw, lg) {
			return 0, differs(fmt.Errorf("float32 logits differ"))
		}
		return params, nil
	}
	var num, den float64
	for i := range lw {
		d := float64(lw[i]) - float64(lg[i])
		num += d * d
		den += float64(lw[i]) * float64(lw[i])
	}
	if rel := math.Sqrt(num / max(den, 1e-30)); !(rel < 0.1) {
		return 0, differs(fmt.Errorf("logits differ by %.3g (relative) after rounding", rel))
	}
	return params, nil
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
