package activities

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/model/gptq"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// EvaluateInput names the exported checkpoint of a job.
type EvaluateInput struct {
	Job    recipe.Job   `json:"job"`
	Export ExportOutput `json:"export"`
}

// Quality is the quality report of a compressed model.
type Quality struct {
	// Compressed compares the exported checkpoint, as read back from disk,
	// with the original model on the evaluation set (nil without one);
	// Original is the original model alone on the same sequences.
	Compressed *eval.Report `json:"compressed,omitempty"`
	Original   *eval.Report `json:"original,omitempty"`

	Params          int64   `json:"params"`
	OriginalParams  int64   `json:"original_params"`
	KeptParams      float64 `json:"kept_params"` // Params / OriginalParams
	FileBytes       int64   `json:"file_bytes"`
	OriginalBytes   int64   `json:"original_bytes"`
	KVBytesPerToken int64   `json:"kv_bytes_per_token"` // the exported model's KV cache per token (16-bit, or its quantized latents)
	// OriginalKVBytesPerToken is the original model's.
	OriginalKVBytesPerToken int64 `json:"original_kv_bytes_per_token"`
	Skipped                 bool  `json:"skipped"`
	// Backend is the compute backend of the evaluation (kernels.Describe),
	// e.g. "openblas" or "cuda: NVIDIA H200 (150 GB, driver 13000)".
	Backend string `json:"backend,omitempty"`
	// Data, for text evaluation data, is its token rows (tokenized once
	// into the store; named here so that gc keeps them); unset for ids.
	Data store.Ref `json:"data,omitzero"`
}

// Evaluate loads the exported checkpoint from disk (the read-back check of
// the export) and measures it against the original model.
func (a *Activities) Evaluate(ctx context.Context, in EvaluateInput) (Quality, error) {
	job := in.Job
	var data string
	n := 0
	if job.Evaluation != nil && job.Recipe.Evaluation != nil {
		data, n = evalDigest(job), job.Recipe.Evaluation.Sequences
	}
	key := store.Key("evaluate", Version, in.Export.Files, data, n)
	var q Quality
	if ref, ok, err := a.Store.Lookup(key); err != nil {
		return q, err
	} else if ok && a.Store.GetJSON(ref, &q) == nil {
		q.Skipped = true
		return q, nil
	}
	set, stop := a.heartbeat(ctx, Progress{Stage: "evaluate", Phase: "load"}, 0)
	defer stop()
	err := a.guard(func() error {
		if err := checkInputs(job.Model); err != nil {
			return err
		}
		// The export before this held whole models: return that garbage to
		// the OS now, or this step's reads stack on top of it and set the
		// job's peak memory.
		debug.FreeOSMemory()
		or, err := model.Open(job.Recipe.Model)
		if err != nil {
			return inputError(fmt.Errorf("load model: %w", err))
		}
		defer or.Close()
		top, err := a.top(job, or)
		if err != nil {
			return err
		}
		comp, done, err := openExport(in.Export.Dir, top.Backend)
		if err != nil {
			return inputError(err)
		}
		defer done()
		var origSize, compSize size
		orig := origSize.count(eval.Reader(or, top), func(err error) error { return fmt.Errorf("load model: %w", err) })
		comp = compSize.count(comp, func(err error) error { return err })
		q = Quality{FileBytes: in.Export.Bytes, Backend: kernels.Describe(a.backend())}
		for _, f := range job.Model {
			q.OriginalBytes += f.Bytes
		}
		if n == 0 {
			err = inputError(readBlocks(orig, comp))
		} else {
			q.Original, q.Compressed, q.Data, err = a.compare(ctx, set, job, comp, orig, n)
		}
		if err != nil {
			return err
		}
		q.Params, q.OriginalParams = NumParams(comp.Top)+compSize.params, NumParams(orig.Top)+origSize.params
		q.KVBytesPerToken, q.OriginalKVBytesPerToken = compSize.kv, origSize.kv
		q.KeptParams = float64(q.Params) / float64(q.OriginalParams)
		return nil
	})
	if err != nil {
		return Quality{}, err
	}
	if _, err := a.Store.PutJSON(key, q); err != nil {
		return Quality{}, a.storeError(err)
	}
	return q, nil
}

// compare evaluates the exported model against the original on the first
// n sequences of the evaluation data, one block at a time (eval.Compare),
// and returns the original's report (the one stored for this model and
// data when there is one, else the pass's, then stored), the exported
// model's and the data's token rows.
func (a *Activities) compare(ctx context.Context, set func(Progress), job recipe.Job, comp, orig eval.Source, n int) (base, rep *eval.Report, data store.Ref, err error) {
	t, isText := evalText(job)
	ds, data, err := a.dataset(job, t, isText)
	if err != nil {
		return nil, nil, data, err
	}
	defer ds.Close()
	if err := canceled(ctx); err != nil {
		return nil, nil, data, err
	}
	o := eval.Options{OnBlock: func(l int) error {
		set(Progress{Stage: "evaluate", Block: l, Phase: "blocks", Done: fmt.Sprintf("block %d of %d", l+1, orig.Top.Config.NumLayers)})
		return canceled(ctx)
	}}
	r, b, err := eval.Compare(comp, orig, ds, n, o)
	if err != nil {
		return nil, nil, data, inputError(err)
	}
	key := store.Key("baseline", Version, ModelDigest(job), evalDigest(job), n)
	var stored eval.Report
	if ref, ok, err := a.Store.Lookup(key); err == nil && ok && a.Store.GetJSON(ref, &stored) == nil {
		return &stored, &r, data, nil
	}
	if _, err := a.Store.PutJSON(key, b); err != nil {
		return nil, nil, data, a.storeError(err)
	}
	return &b, &r, data, nil
}

// openExport opens an exported checkpoint to be read one block at a time
// (gptq.Open for a GPTQ one, model.Open for any other), with its EoRA
// adapter, when present, applied to each block as it is read; done closes
// its files.
func openExport(dir string, k kernels.Backend) (src eval.Source, done func(), err error) {
	var adapters []gptq.Adapter
	adir := filepath.Join(dir, AdapterDir)
	if _, err := os.Stat(filepath.Join(adir, "adapter_config.json")); err == nil {
		if adapters, _, err = gptq.ReadAdapter(adir); err != nil {
			return src, nil, err
		}
	}
	var r model.BlockReader
	if gptq.IsCheckpoint(dir) {
		r, err = gptq.Open(dir)
	} else {
		r, err = model.Open(dir)
	}
	if err != nil {
		return src, nil, err
	}
	top, err := r.Model(k)
	if err != nil {
		r.Close()
		return src, nil, err
	}
	layers := top.Config.NumLayers
	src = eval.Source{Top: top, Block: func(l int) (*model.Block, error) {
		b, err := r.Block(l)
		if err != nil || len(adapters) == 0 {
			return b, err
		}
		return gptq.ApplyBlockAdapters(b, l, layers, adapters)
	}}
	return src, func() { r.Close() }, nil
}

// size sums the parameters and KV cache bytes per token of the blocks a
// source reads.
type size struct {
	params int64
	kv     int64
}

// count returns src with every block it reads counted into s, and read
// errors passed through wrap.
func (s *size) count(src eval.Source, wrap func(error) error) eval.Source {
	read := src.Block
	src.Block = func(l int) (*model.Block, error) {
		b, err := read(l)
		if err != nil {
			return nil, wrap(err)
		}
		one := model.Model{Config: src.Top.Config, Blocks: []*model.Block{b}}
		s.params += b.NumParams()
		s.kv += int64(one.KVBytesPerToken())
		return b, nil
	}
	return src
}

// readBlocks reads every block of both sources, one at a time (their sizes
// without an evaluation).
func readBlocks(srcs ...eval.Source) error {
	for _, src := range srcs {
		for l := range src.Top.Config.NumLayers {
			if _, err := src.Block(l); err != nil {
				return err
			}
		}
	}
	return nil
}
