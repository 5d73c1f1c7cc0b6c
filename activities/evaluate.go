package activities

import (
	"context"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/eval"
	"github.com/rankzip/rankzip/kernels"
	"github.com/rankzip/rankzip/model"
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
	_, stop := a.heartbeat(ctx, Progress{Stage: "evaluate", Phase: "load"}, 0)
	defer stop()
	err := a.guard(func() error {
		orig, err := a.model(job)
		if err != nil {
			return err
		}
		comp, err := LoadExport(in.Export.Dir, orig.Backend)
		if err != nil {
			return inputError(err)
		}
		q = Quality{Params: NumParams(comp), OriginalParams: NumParams(orig), FileBytes: in.Export.Bytes,
			KVBytesPerToken: int64(comp.KVBytesPerToken()), OriginalKVBytesPerToken: int64(orig.KVBytesPerToken()), Backend: kernels.Describe(a.backend())}
		q.KeptParams = float64(q.Params) / float64(q.OriginalParams)
		for _, f := range job.Model {
			q.OriginalBytes += f.Bytes
		}
		if n == 0 {
			return nil
		}
		t, isText := evalText(job)
		ds, ref, err := a.dataset(job, t, isText)
		if err != nil {
			return err
		}
		q.Data = ref
		defer ds.Close()
		if err := canceled(ctx); err != nil {
			return err
		}
		base, err := a.baseline(orig, ds, job, n)
		if err != nil {
			return err
		}
		if err := canceled(ctx); err != nil {
			return err
		}
		rep, err := eval.Evaluate(comp, orig, ds, n, nil)
		if err != nil {
			return inputError(err)
		}
		q.Original, q.Compressed = &base, &rep
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

// baseline evaluates the original model alone, once per model and data.
func (a *Activities) baseline(orig *model.Model, ds *calib.Dataset, job recipe.Job, n int) (eval.Report, error) {
	key := store.Key("baseline", Version, ModelDigest(job), evalDigest(job), n)
	var rep eval.Report
	if ref, ok, err := a.Store.Lookup(key); err == nil && ok && a.Store.GetJSON(ref, &rep) == nil {
		return rep, nil
	}
	rep, err := eval.Evaluate(orig, nil, ds, n, nil)
	if err != nil {
		return rep, inputError(err)
	}
	if _, err := a.Store.PutJSON(key, rep); err != nil {
		return rep, a.storeError(err)
	}
	return rep, nil
}
