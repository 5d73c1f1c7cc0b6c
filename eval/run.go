package eval

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/rankzip/rankzip/calib"
	"github.com/rankzip/rankzip/model"
)

var errEnough = errors.New("enough sequences")

// Evaluate scores m on the first n sequences of ds (every sequence when
// n ≤ 0), one sequence at a time. With base it also compares against the
// baseline model. dump, if not nil, receives m's logits as float32
// little-endian, [sequences × positions × vocab] in row order. It holds
// both models whole; Compare gives the same reports one block at a time.
func Evaluate(m, base *model.Model, ds *calib.Dataset, n int, dump io.Writer) (Report, error) {
	vocab := m.Config.VocabSize
	if base != nil && base.Config.VocabSize != vocab {
		return Report{}, fmt.Errorf("baseline vocabulary %d differs from the model's %d", base.Config.VocabSize, vocab)
	}
	acc := NewAccumulator(vocab)
	err := ds.Each(func(row int64, ids []int32) error {
		if n > 0 && row >= int64(n) {
			return errEnough
		}
		seq := [][]int32{slices.Clone(ids)}
		logits, err := m.Forward(seq)
		if err != nil {
			return fmt.Errorf("%s row %d: %w", ds.Path(), row, err)
		}
		var bl []float32
		if base != nil {
			if bl, err = base.Forward(seq); err != nil {
				return fmt.Errorf("%s row %d (baseline): %w", ds.Path(), row, err)
			}
		}
		if err := acc.Add(seq[0], logits, bl); err != nil {
			return fmt.Errorf("%s row %d: %w", ds.Path(), row, err)
		}
		if dump != nil {
			return dumpLogits(dump, logits)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return Report{}, err
	}
	if acc.sequences == 0 {
		return Report{}, fmt.Errorf("%s: no sequences to evaluate", ds.Path())
	}
	rep := acc.Report(base != nil)
	rep.KVBytes = m.KVBytesPerToken()
	return rep, nil
}
