package compress

import (
	"context"
	"fmt"
	"os"
	"slices"
	"unsafe"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
)

// gradientPass runs the backward pass of src over seqs, batch sequences at
// a time, holding one block's weights at once (model.GradEmbed, GradForward,
// GradHead, GradBackward). A forward pass keeps every block's input in a
// stash file under dir (the system's temporary directory when ""), the LM
// head gives each batch's loss gradient, and the blocks then run backward
// from the last, each read a second time. For block l, add gets each
// batch's predicted tokens and the gradients of the block's modules mods,
// in batch order; then done, when not nil, gets the block and the original
// streams entering it (Original mode, in calib.Embed's batches). Batches
// with no token to predict get no gradient; what names the caller in
// errors.
func gradientPass(ctx context.Context, src Source, seqs [][]int32, batch int, mods []string, dir, what string,
	add func(tokens int, g map[string]*model.Grad), done func(l int, b *model.Block, in *calib.Streams) error) error {
	top := src.Top
	batches := splitBatches(seqs, batch)
	if predicting(batches) == 0 {
		return fmt.Errorf("%s: no calibration sequence has two tokens", what)
	}
	hs := make([]*model.States, len(batches))
	for b, bs := range batches {
		var err error
		if hs[b], err = top.GradEmbed(bs); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	st, err := newStash(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer st.close()
	key := func(l, b int) int { return l*len(batches) + b }
	for l := range src.Layers() {
		if err := ctx.Err(); err != nil {
			return err
		}
		blk, err := src.Block(l)
		if err != nil {
			return err
		}
		for b := range batches {
			if err := st.put(key(l, b), hs[b]); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			if hs[b], err = top.GradForward(l, blk, hs[b]); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
		}
	}
	dh := make([][]float32, len(batches))
	tokens := make([]int, len(batches))
	for b, bs := range batches {
		if !predicts(bs) {
			continue // nothing to predict: no gradient
		}
		if _, tokens[b], dh[b], err = top.GradHead(bs, hs[b]); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	clear(hs) // the last block's outputs: not needed again
	for l := src.Layers() - 1; l >= 0; l-- {
		if err := ctx.Err(); err != nil {
			return err
		}
		blk, err := src.Block(l)
		if err != nil {
			return err
		}
		names := make([]string, len(mods))
		for i, mod := range mods {
			names[i] = model.ModuleName(l, mod)
		}
		in := &calib.Streams{Mode: calib.Original}
		for b := range batches {
			h, err := st.get(key(l, b))
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			if done != nil {
				in.Orig = append(in.Orig, h)
			}
			if dh[b] == nil {
				continue
			}
			g, err := top.GradBackward(l, blk, h, dh[b], names)
			if err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			add(tokens[b], g)
		}
		if done != nil {
			if err := done(l, blk, in); err != nil {
				return err
			}
		}
	}
	return nil
}

// splitBatches cuts seqs into batches of batch sequences, as calib.Embed
// does.
func splitBatches(seqs [][]int32, batch int) [][][]int32 {
	var out [][][]int32
	for lo := 0; lo < len(seqs); lo += batch {
		out = append(out, seqs[lo:min(len(seqs), lo+batch)])
	}
	return out
}

// predicts tells whether a batch has a token to predict.
func predicts(batch [][]int32) bool {
	return slices.ContainsFunc(batch, func(s []int32) bool { return len(s) > 1 })
}

// predicting counts the batches with a token to predict.
func predicting(batches [][][]int32) int {
	n := 0
	for _, b := range batches {
		if predicts(b) {
			n++
		}
	}
	return n
}

// stash keeps hidden states in an unlinked temporary file, written once and
// read back by key: a pass that keeps every block's input holds none of
// them in its heap or its mapped pages (the kernel's page cache holds what
// fits).
type stash struct {
	f     *os.File
	end   int64
	spans map[int]stashSpan
}

type stashSpan struct {
	off    int64
	n, dim int
	starts []int
}

func newStash(dir string) (*stash, error) {
	f, err := os.CreateTemp(dir, "rankzip-inputs-*.f32")
	if err != nil {
		return nil, fmt.Errorf("keep the blocks' inputs: %w", err)
	}
	// Unlinked at once where the system allows: a killed process leaves
	// nothing behind. close removes it otherwise.
	os.Remove(f.Name())
	return &stash{f: f, spans: map[int]stashSpan{}}, nil
}

func (s *stash) close() {
	name := s.f.Name()
	s.f.Close()
	os.Remove(name)
}

func (s *stash) put(key int, h *model.States) error {
	b := floatBytes(h.X)
	if _, err := s.f.WriteAt(b, s.end); err != nil {
		return fmt.Errorf("keep the blocks' inputs in %s: %w", s.f.Name(), err)
	}
	s.spans[key] = stashSpan{off: s.end, n: len(h.X), dim: h.Dim, starts: h.Starts}
	s.end += int64(len(b))
	return nil
}

func (s *stash) get(key int) (*model.States, error) {
	sp, ok := s.spans[key]
	if !ok {
		return nil, fmt.Errorf("stash %s has no entry %d", s.f.Name(), key)
	}
	x := make([]float32, sp.n)
	if _, err := s.f.ReadAt(floatBytes(x), sp.off); err != nil {
		return nil, fmt.Errorf("read the blocks' inputs back from %s: %w", s.f.Name(), err)
	}
	return &model.States{X: x, Dim: sp.dim, Starts: sp.starts}, nil
}

// floatBytes is x's memory as bytes (the stash is read by the process that
// wrote it, so the byte order is the machine's).
func floatBytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x))
}
