package activities

import (
	"fmt"

	"github.com/rankzip/rankzip/compress"
	"github.com/rankzip/rankzip/model"
	"github.com/rankzip/rankzip/recipe"
	"github.com/rankzip/rankzip/store"
)

// modelSource is a job's model for the planning steps, read one block at a
// time (compress.Source): the embeddings, final norm and LM head once per
// worker, each block from the checkpoint's mapped files whenever a pass asks
// for it, so that planning holds one block's weights whatever the depth.
type modelSource struct {
	compress.Source
	r *model.Reader
	// err is the first failed read, classified (bad input, store error):
	// it, not the compress error that wraps it, is the step's error.
	err error
}

// openSource opens the job's original model; Close releases its files.
func (a *Activities) openSource(job recipe.Job) (*modelSource, error) {
	if err := checkInputs(job.Model); err != nil {
		return nil, err
	}
	r, err := model.Open(job.Recipe.Model)
	if err != nil {
		return nil, inputError(fmt.Errorf("load model: %w", err))
	}
	top, err := a.top(job, r)
	if err != nil {
		r.Close()
		return nil, err
	}
	s := &modelSource{r: r}
	s.Source = compress.Source{Top: top, Block: func(l int) (*model.Block, error) {
		b, err := r.Block(l)
		if err != nil {
			return nil, s.fail(inputError(fmt.Errorf("load model: %w", err)))
		}
		return b, nil
	}}
	return s, nil
}

// Close releases the checkpoint's files.
func (s *modelSource) Close() { s.r.Close() }

func (s *modelSource) fail(err error) error {
	if s.err == nil {
		s.err = err
	}
	return err
}

// failed returns the read that made a pass fail, else err.
func (s *modelSource) failed(err error) error {
	if s.err != nil {
		return s.err
	}
	return err
}

// applyStages makes the source's blocks those the earlier stages left:
// stages[j][i] is block i after stage j, applied in order as each block is
// read.
func (s *modelSource) applyStages(a *Activities, stages [][]store.Ref) error {
	for j, refs := range stages {
		if len(refs) != s.Layers() {
			return badInput(fmt.Errorf("stage %d has %d blocks for a model with %d", j, len(refs), s.Layers()))
		}
	}
	read := s.Block
	s.Block = func(i int) (*model.Block, error) {
		b, err := read(i)
		if err != nil {
			return nil, err
		}
		prior := make([]store.Ref, len(stages))
		for j := range stages {
			prior[j] = stages[j][i]
		}
		if b, err = a.applyStages(b, prior); err != nil {
			return nil, s.fail(err)
		}
		return b, nil
	}
	return nil
}
